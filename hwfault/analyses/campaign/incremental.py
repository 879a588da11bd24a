"""Re-run only what a fault can change: the forward pass from the faulty layer on.

The model is traced once with ``torch.fx``; the fault-free run over the evaluation inputs records
intermediate values. A trial whose faults lie in the parameters of one layer recomputes only the
graph nodes downstream of that layer's parameters, reading everything else (the activations
entering the layer, the untouched branches of residual blocks) from the cache. The result is the
same tensor the full forward pass gives, computed with the same kernels on the same inputs.

The cache is bounded (``budget_bytes``): it keeps, within the budget, the values that trials read
for the layers holding the most parameters, last layers first (their values are the smallest), and
then the inputs of the layers left over. A value a trial needs that is not kept is recomputed,
fault-free, from the nearest kept ones; so any budget gives the same outputs, a smaller one costs
more recomputation.

When a trial's faults are a few elements of one Linear or Conv weight, even that layer is not
recomputed: only the output channels of the faulty weights can change, by the faulty weight times
the matching input slice, so the layer's output is its cached output plus that sparse correction
(:meth:`ForwardCache.logits` with ``sparse``). The change is then followed channel by channel
through channel-wise operations (norms, activations, residual sums, pooling), and the next Linear or
Conv layer is its cached output plus the layer applied to the change alone. The sums then associate
differently from a full recompute, so outputs agree with it to float32 round-off (tested), not bit
for bit; a campaign uses the same path in every process, so its rows stay identical across
processes, and its SDC, DUE and accuracy equal those of plain recomputation (tested).

Given the golden logits (:meth:`ForwardCache.logits_proven`), a trial drops the inputs a Lipschitz
bound proves keep their top-1 class (:mod:`.bound`): from the faults themselves, then at each cached
value all of the fault's effect flows through; the rest of the pass runs on the other inputs only.

Models that ``torch.fx`` cannot trace (data-dependent control flow) fall back to the full forward.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .values import Rows, cache_bytes, channelwise, fetch, scaled, sig  # noqa: F401 (cache_bytes: re-exported)

SPARSE_MAX = 64  # faulty elements up to which a layer's output is corrected instead of recomputed
PROBE_INPUTS = 8  # inputs on which the sizes of the cached values are measured
_CLEAN: frozenset = frozenset()  # the channels in which a fault-free value differs: none
_LOCAL_MODULES = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU,
                  nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)
_LOCAL_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.elu,
                    operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d, F.max_pool1d,
                    F.max_pool2d, torch.flatten}
_LOCAL_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "flatten"}


class ForwardCache:
    """Cached fault-free activations of ``model`` on inputs ``x`` and partial re-evaluation.

    ``budget_bytes`` bounds the cache: the values kept are chosen for the layers that hold the most
    parameters (the most trials), last layers first (their values are the smallest); a value a trial
    needs that is not kept is recomputed, fault-free, from the nearest kept ones. ``None`` keeps every
    intermediate value, ``"auto"`` the peak of one forward pass. ``params``: the names of the parameters
    trials put faults in (default: all), whose layers the kept values serve."""

    def __init__(self, model: nn.Module, x: torch.Tensor, *, budget_bytes: float | str | None = None,
                 params=None):
        self.model = model
        self.gm = fx.symbolic_trace(model)
        self.nodes = list(self.gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self._plans: dict = {}
        self._free_cache: dict[int, tuple] = {}
        self._kinds: dict = {}
        self.modules = dict(self.gm.named_modules())
        self._index()
        self.env: dict[fx.Node, object] = {}
        self.budget_bytes = budget_bytes
        with torch.no_grad():
            m = min(len(x), PROBE_INPUTS)
            probe = self._fill(x[:m], None)
            if budget_bytes is None:
                self.keep = set(self.nodes)
            else:
                sizes = {n: scaled(v, m, len(x)) for n, v in probe.items()}
                if budget_bytes == "auto":  # as much as one forward pass holds at its peak
                    self.budget_bytes = budget_bytes = self._forward_peak(sizes)
                self.keep = self._choose(sizes, budget_bytes, params)
            full: dict = {}
            self._norm_nodes = {n for n in (self._sparse_node(p) for p in (params or self._owner)) if n is not None}
            self._norms: dict = {}
            self.env = self._fill(x, self.keep, full)
        self._rows_of(probe, full, m, len(x))
        self.view = Rows(self.env, self._batch)
        self.first_param = next((i for i, n in enumerate(self.nodes) if n.op in ("call_module", "get_attr")
                                 and self._plan_nodes_touch(n)), 0)

    def _fill(self, x, keep: set | None, sigs: dict | None = None) -> dict:
        """The fault-free forward pass; returns the values of the nodes in ``keep`` (None: all), freeing
        every other value after its last use, so the peak is one forward pass plus what is kept
        (``sigs``: filled with every value's type and shape)."""
        vals: dict = {}
        last = self._last_use()
        for i, node in enumerate(self.nodes):
            if node.op == "output":
                break
            vals[node] = x if node.op == "placeholder" else self._eval(node, lambda n: vals[n])
            if sigs is not None:
                sigs[node] = sig(vals[node])
                if node in self._norm_nodes:
                    from .bound import input_norms

                    self._norms[node] = input_norms(self.modules[node.target], vals[node.args[0]])
            if keep is not None:
                for a in node.all_input_nodes:
                    if last[a] == i and a not in keep:
                        del vals[a]
        return vals if keep is None else {n: v for n, v in vals.items() if n in keep}

    def _rows_of(self, probe: dict, full: dict, m: int, n: int) -> None:
        """Which values carry the inputs along dimension 0 (``_batch``), and whether a trial may drop
        inputs part-way (``gains``: every value is then batch-carrying or the same for any batch)."""
        from .bound import Gains

        self._batch, ok = set(), m < n
        for node, v in probe.items():
            a, b = sig(v), full.get(node)
            if a[0] == "t" and b is not None and b[0] == "t" and a[1][:1] == (m,) and b[1][:1] == (n,) \
                    and a[1][1:] == b[1][1:]:
                self._batch.add(node)
            elif a != b:
                ok = False
        shapes = {node: (None if sg[0] != "t" else sg[1]) for node, sg in full.items()}
        self.gains = Gains(self.gm, self.nodes, shapes) if ok else None

    def _forward_peak(self, sizes: dict) -> float:
        """The most bytes of intermediate values alive at once in a plain forward pass."""
        last, live, peak = self._last_use(), 0.0, 0.0
        for i, node in enumerate(self.nodes):
            if node.op in ("placeholder", "output"):
                continue
            live += sizes.get(node, 0.0)
            peak = max(peak, live)
            for a in node.all_input_nodes:
                if last[a] == i and a.op != "placeholder":
                    live -= sizes.get(a, 0.0)
        return peak

    def _last_use(self) -> dict:
        last = {n: self.pos[n] for n in self.nodes}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last[a] = max(last[a], i)
        return last

    def _eval(self, node, get):
        args = fx.node.map_arg(node.args, get)
        kwargs = fx.node.map_arg(node.kwargs, get)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        if node.op == "get_attr":
            return fetch(self.gm, node.target)
        raise RuntimeError(f"unexpected fx node {node.op}")

    def _choose(self, sizes: dict, budget: float, params=None) -> set:
        """The values to keep within ``budget`` bytes: for each layer, last first, what a trial with
        faults in it reads from the cache (the layer's input and output, the side inputs of what
        follows) when it fits, else the lean version of that (single-input channel-wise values such
        as a norm or an activation replaced by their input: recomputed per trial, cheaply, instead
        of kept). Then the inputs of the layers left over. The model's input is always kept."""
        keep = {n for n in self.nodes if n.op == "placeholder"}
        used = 0.0
        names = self._owner if params is None else [p for p in params if p in self._owner]
        layers = sorted({self._owner[p] for p in names}, reverse=True)
        short = []

        def take(need) -> bool:
            nonlocal used
            need = [n for n in need if n not in keep and n.op != "output"]
            b = sum(sizes.get(n, 0) for n in need)
            if used + b > budget:
                return False
            keep.update(need)
            used += b
            return True

        for i in layers:
            if not take(self._needs(i)) and not take(self._needs(i, lean=True)):
                short.append(i)
        for i in short:  # what is left: the inputs of the layers not served, so they recompute from there
            for n in self._lean(set(self.nodes[i].all_input_nodes)):
                take([n])
        return keep

    def _needs(self, i: int, lean: bool = False) -> list:
        """The values a trial with faults in node ``i``'s parameters reads: node ``i``'s inputs and
        output, and the inputs from outside the recomputed part of every node after it."""
        dirty = self._down[i]
        out = set()
        for j in dirty:
            out.update(a for a in self.nodes[j].all_input_nodes if self.pos[a] not in dirty)
        if lean:
            out = self._lean(out)
        if self._kind(self.nodes[i]) == "delta":
            out.add(self.nodes[i])
        return sorted(out, key=self.pos.__getitem__)

    def _lean(self, values: set) -> set:
        """``values`` with each single-input channel-wise value replaced by its input, repeatedly."""
        out, todo = set(), list(values)
        while todo:
            v = todo.pop()
            ins = v.all_input_nodes
            if v.op != "placeholder" and self._kind(v) == "local" and len(ins) == 1:
                todo.append(ins[0])
            else:
                out.add(v)
        return out

    def _run(self, todo, overlay: dict, changed: dict | None = None, params: frozenset = frozenset(), golden=None,
             rows: torch.Tensor | None = None):
        """Evaluate the nodes in ``todo`` (graph order) into ``overlay``; reads fall back to the cache.

        ``changed``: for values in ``overlay`` that differ from the cached ones only in a few channels
        (dimension 1), those channels. They are followed through channel-wise operations (norms,
        activations, sums, pooling), and a Linear/Conv layer reading such a value is its cached output
        plus the layer applied to the change alone (:meth:`_delta`).

        ``golden``: the golden logits; at each value that all of the fault's effect flows through and
        whose fault-free version the cache keeps, the inputs that :func:`~.bound.proven` keep their
        top-1 class are dropped from the rest of the pass. ``rows``: the inputs to evaluate (None: all).
        Returns ``(out, rows)``, the outputs of the inputs ``rows`` left at the end."""
        self.view = view = Rows(self.env, self._batch, rows)
        out, new = None, overlay

        def get(n):
            return new[n] if n in new else view[n]

        dead = self._frees(todo)
        plan = self._plan_set(params) if changed is not None else None
        gains = self.gains if golden is not None and changed is not None else None
        if gains is not None:
            cuts = self._cuts(params)
            for node in list(new):
                if self._narrow(node, new, golden, cuts):
                    return None, view.rows
        for node in todo:
            for gone in dead.get(node, ()):  # free what no later node reads: the allocator reuses it
                new.pop(gone, None)
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], get)
                continue
            if plan is None:
                new[node] = self._eval(node, get)
            elif node not in plan:  # a fault-free value the cache does not keep, recomputed
                new[node] = self._eval(node, get)
                changed[node] = _CLEAN
            else:
                new[node], changed[node] = self._tracked(node, get, new, changed, params)
                if gains is not None and self._narrow(node, new, golden, cuts):
                    return None, view.rows
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out, view.rows

    def _narrow(self, node, new: dict, golden, cuts: set) -> bool:
        """Drop the inputs that the change of ``node``'s value proves unchanged (:mod:`.bound`) from the
        overlay and the view, when ``node`` is one of the ``cuts``; True when none is left."""
        from .bound import change_norms, proven

        if node not in cuts or node not in self.env or node not in self._batch:
            return False
        g = self.gains.of(node)
        if g is None:
            return False
        view = self.view
        rows = view.rows
        done = proven(g, change_norms(new[node] - view[node]), golden if rows is None else golden.index_select(0, rows))
        if int(done.sum()) * 4 < done.numel():  # (a small drop is not worth copying every value for)
            return False
        keep = torch.nonzero(~done).reshape(-1)
        view.rows = keep if rows is None else rows.index_select(0, keep)
        if keep.numel() == 0:
            return True
        for n, v in new.items():
            if n in self._batch and isinstance(v, torch.Tensor):
                new[n] = v.index_select(0, keep)
        return False

    def _tracked(self, node, get, new: dict, changed: dict, params: frozenset):
        """A plan node's value and the channels in which it differs from the cached one (None: any)."""
        chans: set = set()
        for a in node.all_input_nodes:
            c = changed.get(a, None) if a in new else _CLEAN
            if c is None:
                return self._eval(node, get), None
            chans |= c
        kind = self._kind(node)
        if chans and kind == "delta" and len(chans) <= SPARSE_MAX and node in self.env \
                and node.args[0] in self.env and not (self._params_of(node) & params):
            d = self._delta(node, get(node.args[0]), self.view[node.args[0]], sorted(chans))
            if d is not None:
                return self.view[node] + d, None
        value = self._eval(node, get)
        if chans and kind == "local" and channelwise(node, value, [get(a) for a in node.all_input_nodes
                                                                 if changed.get(a, _CLEAN) if a in new]):
            return value, chans
        return value, None

    def _kind(self, node) -> str:
        """``delta``: a Linear or ungrouped zero-padded Conv1d/2d called on one input; ``local``: an
        operation that acts on each channel (dimension 1) separately; else ``other``."""
        kind = self._kinds.get(node)
        if kind is None:
            kind = "other"
            if node.op == "call_module":
                m = self.modules[node.target]
                if len(node.args) == 1 and not node.kwargs and (
                        isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1
                                                     and m.padding_mode == "zeros" and not isinstance(m.padding, str))):
                    kind = "delta"
                elif isinstance(m, _LOCAL_MODULES) and not (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training):
                    kind = "local"
            elif (node.op == "call_function" and node.target in _LOCAL_FUNCTIONS) or \
                    (node.op == "call_method" and node.target in _LOCAL_METHODS):
                kind = "local"
            self._kinds[node] = kind
        return kind

    def _params_of(self, node) -> frozenset:
        """The names of the parameters a node's module holds (cached: read in every trial)."""
        key = ("params_of", node)
        got = self._kinds.get(key)
        if got is None:
            got = frozenset() if node.op != "call_module" else frozenset(
                f"{node.target}.{p}" for p, _ in self.modules[node.target].named_parameters())
            self._kinds[key] = got
        return got

    def _plan_set(self, params: frozenset) -> set:
        key = ("set", params)
        got = self._plans.get(key)
        if got is None:
            got = set(self._plan(params))
            if len(self._plans) < 4096:
                self._plans[key] = got
        return got

    def _delta(self, node, new_in, old_in, chans: list) -> torch.Tensor | None:
        """The change of a Linear/Conv layer's output when its input changed only in ``chans``."""
        m = self.modules[node.target]
        if not isinstance(new_in, torch.Tensor) or new_in.ndim < 2 or (isinstance(m, nn.Linear) and new_in.ndim != 2):
            return None
        idx = torch.tensor(chans, device=new_in.device)
        d = new_in.index_select(1, idx) - old_in.index_select(1, idx)
        if not bool(torch.isfinite(d).all()):  # Inf - Inf: recompute, so NaN/Inf land as they would
            return None
        w = m.weight.index_select(1, idx)
        if isinstance(m, nn.Linear):
            return d @ w.t()
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        return conv(d, w, None, m.stride, m.padding, m.dilation)

    def _frees(self, plan: list) -> dict:
        """For a partial run: before evaluating each node, the overlay values no later node reads."""
        key = id(plan)
        hit = self._free_cache.get(key)
        if hit is not None and hit[0] is plan:
            return hit[1]
        where = {n: i for i, n in enumerate(plan)}
        last: dict = {}
        for n in plan:
            for a in n.all_input_nodes:
                if a in where:
                    last[a] = n
        frees: dict = {}
        for a, n in last.items():
            i = where[n]
            if i + 1 < len(plan):
                frees.setdefault(plan[i + 1], []).append(a)
        self._free_cache[key] = (plan, frees)
        return frees

    def _index(self) -> None:
        """Once: which node reads each parameter, and every node's downstream set (as graph positions)."""
        pos = self.pos
        self._owner: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.op == "call_module":
                for pname, _ in self.modules[node.target].named_parameters():
                    self._owner.setdefault(f"{node.target}.{pname}", i)
            elif node.op == "get_attr":
                self._owner.setdefault(node.target, i)
        self._down: list[set[int]] = [set() for _ in self.nodes]
        for i in range(len(self.nodes) - 1, -1, -1):
            self._down[i].add(i)
            for user in self.nodes[i].users:
                self._down[i] |= self._down[pos[user]]

    def _plan(self, params: frozenset) -> list[fx.Node]:
        """The nodes that depend on the given parameter names, plus the output, in graph order."""
        plan = self._plans.get(params)
        if plan is None:
            dirty: set[int] = {len(self.nodes) - 1}
            for p in params:
                if p in self._owner:
                    dirty |= self._down[self._owner[p]]
                else:  # a parameter read in a way the trace does not show: recompute everything
                    dirty = set(range(len(self.nodes)))
            plan = [self.nodes[i] for i in sorted(dirty) if self.nodes[i].op != "placeholder"]
            if len(self._plans) < 4096:
                self._plans[params] = plan
        return plan

    def _order(self, params: frozenset, skip=None) -> list[fx.Node]:
        """What a trial evaluates: the plan (less ``skip``, whose value the caller supplies) and the
        fault-free values it reads that the cache does not keep, recomputed from kept ones."""
        key = ("order", params, skip)
        order = self._plans.get(key)
        if order is None:
            todo = {n for n in self._plan(params) if n is not skip}
            stack = [a for n in todo for a in n.all_input_nodes if a not in todo and a is not skip]
            while stack:
                v = stack.pop()
                if v in todo or v in self.env:
                    continue
                todo.add(v)
                stack.extend(v.all_input_nodes)
            order = sorted(todo, key=self.pos.__getitem__)
            if len(self._plans) < 4096:
                self._plans[key] = order
        return order

    def start_index(self, params: frozenset) -> int:
        """Position of the first recomputed node (0 = the whole graph), for reporting."""
        plan = self._plan(params)
        return self.pos[plan[0]] if plan else len(self.nodes)

    def _plan_nodes_touch(self, node) -> bool:
        if node.op == "call_module":
            return any(True for _ in self.modules[node.target].parameters(recurse=True))
        return isinstance(fetch(self.gm, node.target), nn.Parameter)

    def logits(self, params: frozenset, sparse: tuple[str, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs with the current (faulty) values of ``params``: recompute their downstream nodes only
        (the whole forward pass when the first layer is among them). The cache is left intact.

        ``sparse = (name, flat_index, delta)``: the faults are ``delta`` added at ``flat_index`` of the
        weight ``name`` (the only faulty tensor); its layer's output is then corrected, not recomputed
        (when the cache keeps that layer's input and output)."""
        return self.logits_proven(params, sparse)[0]

    @torch.no_grad()
    def logits_proven(self, params: frozenset, sparse=None, golden: torch.Tensor | None = None):
        """:meth:`logits`, dropping on the way the inputs that a bound proves keep their top-1 class
        (``golden``: the golden logits; see :mod:`.bound`). Returns ``(out, rows)``: the outputs of the
        inputs ``rows`` (a LongTensor; None: of all inputs; ``out`` is None when ``rows`` is empty)."""
        if golden is not None and self.gains is None:
            golden = None
        plan = self._plan(params)
        rows = None
        if sparse is not None and len(sparse[1]) <= SPARSE_MAX:
            node = self._sparse_node(sparse[0])
            if golden is not None and node is not None:
                rows = self._proven_at_source(node, sparse[1], sparse[2], golden)
                if rows is not None and rows.numel() == 0:
                    return None, rows
            if node is not None and plan and plan[0] is node and node in self.env and node.args[0] in self.env:
                self.view = Rows(self.env, self._batch, rows)
                out = self._corrected(node, sparse[1], sparse[2])
                if out is not None:
                    chans = self._out_channels(node, sparse[1], out)
                    return self._run(self._order(params, node), {node: out}, {node: chans}, params, golden, rows)
        if plan and self.pos[plan[0]] <= self.first_param and golden is None:
            x = self.env[self.nodes[0]]
            return self.model(x if rows is None else x.index_select(0, rows)), rows
        if golden is None:
            return self._run(self._order(params), {}, rows=rows)
        return self._run(self._order(params), {}, {}, params, golden, rows)  # tracked, to drop inputs at the cuts

    def _proven_at_source(self, node, index: torch.Tensor, delta: torch.Tensor, golden: torch.Tensor):
        """The inputs not proven unchanged by the faults themselves (None: all of them): a weight change
        ``d`` at input channel ``i`` of a Linear/Conv changes an input's output by at most
        ``|d| * ||input channel i||_2`` (precomputed per input in the fault-free pass)."""
        from .bound import proven, source_norms

        norms = self._norms.get(node)
        g = self.gains.of(node)
        if norms is None or g is None or not bool(torch.isfinite(delta).all()):
            return None
        done = proven(g, source_norms(self.modules[node.target], norms, index, delta), golden)
        if int(done.sum()) * 4 < done.numel():
            return None
        return torch.nonzero(~done).reshape(-1)

    def _cuts(self, params: frozenset) -> set:
        """The plan's values that every effect of the faults flows through: no earlier recomputed value
        is read after them."""
        key = ("cuts", params)
        got = self._plans.get(key)
        if got is None:
            got, reach = set(), -1
            first = max((self._owner[p] for p in params if p in self._owner), default=len(self.nodes))
            if any(p not in self._owner for p in params):
                first = len(self.nodes)  # a parameter the trace does not show: no cut is known
            for v in self._plan(params):
                if reach <= self.pos[v] and self.pos[v] >= first:
                    got.add(v)
                reach = max([reach] + [self.pos[u] for u in v.users])
            if len(self._plans) < 4096:
                self._plans[key] = got
        return got

    def _out_channels(self, node, index: torch.Tensor, out: torch.Tensor) -> set | None:
        """The channels (dimension 1) of ``out`` that a Linear/Conv weight's flat indices change: a
        Conv's output channels; a Linear's output features only when they are dimension 1, on (B, F)
        outputs (None: the change is not channel-wise)."""
        m = self.modules[node.target]
        if isinstance(m, nn.Linear) and out.ndim != 2:
            return None
        return set((index // m.weight[0].numel()).tolist())

    def _sparse_node(self, name: str):
        """The call_module node of a Linear/Conv1d/Conv2d whose ``weight`` is ``name`` (else None)."""
        mod_name, _, attr = name.rpartition(".")
        i = self._owner.get(name)
        if attr != "weight" or i is None:
            return None
        node = self.nodes[i]
        if node.op != "call_module" or node.target != mod_name or len(node.args) != 1 or node.kwargs:
            return None
        m = self.modules[node.target]
        if isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode == "zeros"
                                        and not isinstance(m.padding, str)):
            return node
        return None

    def _corrected(self, node, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor | None:
        """The layer's cached output plus the output change of weight deltas at flat ``index``."""
        m = self.modules[node.target]
        x = self.view[node.args[0]]
        out = self.view[node]
        out = out.clone() if self.view.rows is None else out  # (a view of some inputs is a copy already)
        if isinstance(m, nn.Linear):
            o, i = index // m.in_features, index % m.in_features
            for oo, ii, d in zip(o.tolist(), i.tolist(), delta.tolist()):
                out[..., oo] += d * x[..., ii]
            return out
        w = m.weight
        sub = w.shape[1:]  # (cin/groups, k) or (cin/groups, kh, kw)
        per_out = sub.numel()
        cout_g = w.shape[0] // m.groups
        xp = F.pad(x, [p for pad in reversed(m.padding) for p in (pad, pad)]) if any(m.padding) else x
        for flat, d in zip(index.tolist(), delta.tolist()):
            o, rest = divmod(flat, per_out)
            cin = (o // cout_g) * sub[0]
            if w.ndim == 3:
                i, k = divmod(rest, sub[1])
                start = k * m.dilation[0]
                L = out.shape[-1]
                sl = xp[:, cin + i, start:start + m.stride[0] * (L - 1) + 1:m.stride[0]]
                out[:, o] += d * sl
            else:
                i, r = divmod(rest, sub[1] * sub[2])
                kh, kw = divmod(r, sub[2])
                H, W = out.shape[-2:]
                sh, sw = kh * m.dilation[0], kw * m.dilation[1]
                sl = xp[:, cin + i, sh:sh + m.stride[0] * (H - 1) + 1:m.stride[0], sw:sw + m.stride[1] * (W - 1) + 1:m.stride[1]]
                out[:, o] += d * sl
        return out


def try_cache(model: nn.Module, x: torch.Tensor, *, budget_mb: float | str | None = "auto",
              params=None) -> ForwardCache | None:
    """A :class:`ForwardCache` of at most ``budget_mb`` megabytes (``"auto"``: as much as one fault-free
    forward pass over ``x`` holds at its peak, so a campaign needs at most about twice a clean
    evaluation's memory; None: unbounded), or None if the model cannot be traced. ``params``: the
    parameters the trials put faults in."""
    try:
        budget = None if budget_mb is None else budget_mb if budget_mb == "auto" else float(budget_mb) * 2**20
        return ForwardCache(model, x, budget_bytes=budget, params=params)
    except Exception:  # fx raises many types for untraceable code; the full forward pass still works
        return None
