"""Re-run only what a fault can change: the forward pass from the faulty layer on.

The model is traced once with ``torch.fx``; the fault-free run over the evaluation inputs records
every intermediate value. A trial whose faults lie in the parameters of one layer recomputes only
the graph nodes downstream of that layer's parameters, reading everything else (the activations
entering the layer, the untouched branches of residual blocks) from the cache. The result is the
same tensor the full forward pass gives, computed with the same kernels on the same inputs.

When a trial's faults are a few elements of one Linear or Conv weight, even that layer is not
recomputed: only the output channels of the faulty weights can change, by the faulty weight times
the matching input slice, so the layer's output is its cached output plus that sparse correction
(:meth:`ForwardCache.logits` with ``sparse``). The sums then associate differently from a full
recompute, so outputs agree with it to float32 round-off (tested), not bit for bit; a campaign uses
the same path in every process, so its rows stay identical across processes.

Models that ``torch.fx`` cannot trace (data-dependent control flow) fall back to the full forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

SPARSE_MAX = 64  # faulty elements up to which a layer's output is corrected instead of recomputed


class ForwardCache:
    """Cached fault-free activations of ``model`` on inputs ``x`` and partial re-evaluation."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.model = model
        self.gm = fx.symbolic_trace(model)
        self.nodes = list(self.gm.graph.nodes)
        self._plans: dict[frozenset, list[fx.Node]] = {}
        self._free_cache: dict[int, tuple] = {}
        self.modules = dict(self.gm.named_modules())
        self.env: dict[fx.Node, object] = {}
        with torch.no_grad():
            self._run(x, set(self.nodes))
        self.first_param = next((i for i, n in enumerate(self.nodes) if n.op in ("call_module", "get_attr")
                                 and self._plan_nodes_touch(n)), 0)

    def _run(self, x, todo, overlay: dict | None = None) -> torch.Tensor:
        """Evaluate the nodes in ``todo`` in graph order. Values are written to ``overlay`` (a fresh
        dict for a faulty run) or to the cache itself; reads fall back to the cache."""
        env, out = self.env, None
        new = env if overlay is None else overlay

        def get(n):
            return new[n] if n in new else env[n]

        dead = self._frees(todo) if overlay is not None else {}
        for node in (self.nodes if overlay is None else todo):
            if overlay is None and node not in todo:
                continue
            for gone in dead.get(node, ()):  # free what no later node reads: the allocator reuses it
                del new[gone]
            if node.op == "placeholder":
                new[node] = x
                continue
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], get)
                continue
            args = fx.node.map_arg(node.args, get)
            kwargs = fx.node.map_arg(node.kwargs, get)
            if node.op == "call_module":
                new[node] = self.modules[node.target](*args, **kwargs)
            elif node.op == "call_function":
                new[node] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                obj, *rest = args
                new[node] = getattr(obj, node.target)(*rest, **kwargs)
            elif node.op == "get_attr":
                new[node] = _fetch(self.gm, node.target)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

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
        pos = {n: i for i, n in enumerate(self.nodes)}
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
            if not hasattr(self, "_owner"):
                self._index()
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

    def start_index(self, params: frozenset) -> int:
        """Position of the first recomputed node (0 = the whole graph), for reporting."""
        plan = self._plan(params)
        return self.nodes.index(plan[0]) if plan else len(self.nodes)

    def _plan_nodes_touch(self, node) -> bool:
        if node.op == "call_module":
            return any(True for _ in self.modules[node.target].parameters(recurse=True))
        return isinstance(_fetch(self.gm, node.target), nn.Parameter)

    @torch.no_grad()
    def logits(self, params: frozenset, sparse: tuple[str, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs with the current (faulty) values of ``params``: recompute their downstream nodes only
        (the whole forward pass when the first layer is among them). The cache is left intact.

        ``sparse = (name, flat_index, delta)``: the faults are ``delta`` added at ``flat_index`` of the
        weight ``name`` (the only faulty tensor); its layer's output is then corrected, not recomputed."""
        plan = self._plan(params)
        if sparse is not None and len(sparse[1]) <= SPARSE_MAX:
            node = self._sparse_node(sparse[0])
            if node is not None and plan and plan[0] is node:
                out = self._corrected(node, sparse[1], sparse[2])
                if out is not None:
                    return self._run(None, self._tail(params, plan), overlay={node: out})
        if plan and self.nodes.index(plan[0]) <= self.first_param:
            return self.model(self.env[self.nodes[0]])
        return self._run(None, plan, overlay={})

    def _tail(self, params: frozenset, plan: list) -> list:
        """``plan`` without its first node, cached (the free lists are cached per plan object)."""
        key = ("tail", params)
        tail = self._plans.get(key)
        if tail is None:
            tail = plan[1:]
            if len(self._plans) < 4096:
                self._plans[key] = tail
        return tail

    def _sparse_node(self, name: str):
        """The call_module node of a Linear/Conv1d/Conv2d whose ``weight`` is ``name`` (else None)."""
        if not hasattr(self, "_owner"):
            self._index()
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
        x = self.env[node.args[0]]
        out = self.env[node].clone()
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


def _fetch(mod: nn.Module, target: str):
    obj = mod
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def cache_bytes(cache: ForwardCache) -> int:
    """The bytes a cache holds (every cached tensor, including those inside tuples)."""
    total, seen = 0, set()

    def add(v):
        nonlocal total
        if isinstance(v, torch.Tensor):
            key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += key[1]
        elif isinstance(v, (tuple, list)):
            for u in v:
                add(u)
        elif isinstance(v, dict):
            for u in v.values():
                add(u)

    for v in cache.env.values():
        add(v)
    return total


def try_cache(model: nn.Module, x: torch.Tensor, *, budget_mb: float | None = None) -> ForwardCache | None:
    """A :class:`ForwardCache`, or None if the model cannot be traced or its activations on all of ``x``
    would exceed ``budget_mb`` megabytes (measured on a few inputs first; trials then recompute fully)."""
    try:
        if budget_mb is not None:
            m = min(len(x), 8)
            per_input = cache_bytes(ForwardCache(model, x[:m])) / max(m, 1)
            if per_input * len(x) > budget_mb * 2**20:
                return None
        cache = ForwardCache(model, x)
    except Exception:  # fx raises many types for untraceable code; the full forward pass still works
        return None
    return cache
