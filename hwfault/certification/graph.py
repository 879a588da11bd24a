"""The traced graph: a model read with ``torch.fx`` (or a ``torch.export`` ATen graph) into certified
operations, and the propagation over it.

``ibp``: interval bound propagation (with the last layer merged with the margin specification, as
interval methods usually do, via ``backward(..., interval_inputs=True)``). ``lower`` with 'crown':
a linear relaxation propagated backwards from the specification (CROWN, Zhang et al. 2018, extended
to weights by Weng et al. 2020); intermediate bounds are IBP, then each activation's pre-activation
is tightened by its own backward pass for the neurons it leaves unstable; everything is batched over
inputs. Bounds are computed in float64 with a small conservative slack and hold for real-arithmetic
evaluation of the network; the rounding of a float32 forward pass is not part of the set. Each node
is converted by the builder registered for what it calls (:mod:`.ops`); the traced graph is checked
against the model's own output before any bound is computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError
from ..evaluation import logits
from .ops import ATEN, FUNCTIONS, Activation, Bounds, Call, Op, module_builder, unsupported_error
from .relax import FINAL_SLACK, sum_rest, widen
from .sets import DTYPE, PerturbationSet, _Weights

_BUDGET = 2 ** 23        # elements of the largest coefficient tensor of one backward pass


@dataclass
class _Node:
    name: str
    op: Op | None            # None: the input
    inputs: tuple[int, ...]
    shape: tuple[int, ...]    # without the batch dimension




class _Graph:
    """A model traced with torch.fx into certifiable operations, in topological order."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        from torch.fx import symbolic_trace
        from torch.fx.passes.shape_prop import ShapeProp

        self.model = model
        try:
            gm = symbolic_trace(model)
        except Exception as e:  # fx raises a variety of errors on dynamic control flow
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(f"certify: cannot trace {type(model).__name__} with torch.fx ({msg})") from None
        try:
            ShapeProp(gm).propagate(example)
        except Exception as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(f"certify: model cannot run on data of shape {tuple(example.shape[1:])}: {msg}") from None
        modules = dict(gm.named_modules())
        batch = example.shape[0]
        self.nodes: list[_Node] = []
        self.attrs: dict[str, str] = {}     # get_attr node -> parameter / buffer name
        self.shapes = {n: t.shape for n, t in (*model.named_parameters(), *model.named_buffers())}
        index: dict[str, int] = {}
        output = None
        for node in gm.graph.nodes:
            if node.op == "output":
                out = node.args[0]
                out = out[0] if isinstance(out, (tuple, list)) else out
                if not hasattr(out, "name") or out.name not in index:
                    raise ModelError("certify: the model's output is not a tensor computed from its input")
                output = index[out.name]
                continue
            meta = node.meta.get("tensor_meta")
            if node.op == "get_attr":          # parameters and buffers of torch.export graphs
                self.attrs[node.name] = str(node.target)
                continue
            if node.op == "placeholder":
                if meta is None or not hasattr(meta, "shape"):
                    continue
                if any(n.op is None for n in self.nodes):
                    raise ModelError("certify: models with more than one tensor input are not supported")
                index[node.name] = len(self.nodes)
                self.nodes.append(_Node(node.name, None, (), tuple(meta.shape[1:])))
                continue
            if meta is None or not hasattr(meta, "shape"):   # sizes, shapes and other non-tensor values
                if node.op == "call_module":
                    raise unsupported_error(self._what(node, modules), where=node.name)
                continue
            shape = tuple(meta.shape)
            if not shape or shape[0] != batch:
                raise unsupported_error(self._what(node, modules), " (it does not keep the batch dimension)",
                                        node.name)
            op, ins = self._convert(node, modules, index)
            index[node.name] = len(self.nodes)
            self.nodes.append(_Node(node.name, op, tuple(index[i.name] for i in ins), shape[1:]))
        if output is None or self.nodes[output].op is None or len(self.nodes[output].shape) != 1:
            raise ModelError("certify: expected the model to return logits of shape (batch, classes)")
        self.nodes = self.nodes[:output + 1]
        self.output = output
        self.used = sorted({p for n in self.nodes if n.op is not None for p in n.op.params})
        self.buffers = sorted({b for n in self.nodes if n.op is not None for b in n.op.buffers})
        consumers: dict[int, list[Op]] = {}
        for n in self.nodes:
            for i in n.inputs:
                consumers.setdefault(i, []).append(n.op)
        # pre-activations tightened by their own backward pass; "relu" only needs the unstable ones
        self.preact: dict[int, bool] = {}
        for i, ops in consumers.items():
            acts = [o for o in ops if isinstance(o, Activation)]
            if acts and self.nodes[i].op is not None:
                self.preact[i] = all(o.kind == "relu" for o in acts)
        self._check(example)

    @staticmethod
    def _what(node, modules) -> str:
        if node.op == "call_module":
            return type(modules[node.target]).__name__
        if node.op == "call_function":
            if isinstance(node.target, torch._ops.OpOverload):
                return f"aten.{node.target.overloadpacket.__name__}"
            return getattr(node.target, "__name__", str(node.target))
        return str(node.target)

    def _convert(self, node, modules, index) -> tuple[Op, list]:
        """The op of one node and the nodes it reads, from the builder registered for what it calls."""
        call = Call(node, self._what(node, modules), self, index)
        if node.op == "call_module":
            call.module = modules[node.target]
            if len(call.tensor_args) != 1 or node.kwargs:
                raise call.unsupported(" (call with several inputs)")
            build = module_builder(call.module)
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if not call.is_tensor(call.x):        # the core ATen ops of a torch.export graph
                raise call.unsupported()
            build = ATEN.get(node.target.overloadpacket.__name__)
        elif node.op in ("call_function", "call_method"):
            build = FUNCTIONS.get(node.target)
        else:
            build = None
        if build is None:
            raise call.unsupported()
        return build(call)

    def _check(self, example: torch.Tensor) -> None:
        """The traced graph must reproduce the model (centre weights, float64 vs the model's dtype)."""
        w = self.weights(None)
        got = self.forward(example.to(DTYPE), w)
        with torch.no_grad():
            want = self.model(example)
        want = want[0] if isinstance(want, (tuple, list)) else want
        want = want.detach().to(DTYPE)
        tol = 1e-3 * (1 + float(want.abs().max()))
        if got.shape != want.shape or float((got - want).abs().max()) > tol:
            raise ModelError("certify: the traced graph does not reproduce the model's output "
                             "(an operation is used in a way certify does not model)")

    def weights(self, pset: PerturbationSet | None) -> _Weights:
        """The model's current parameters and buffers (float64) with ``pset`` resolved on them."""
        return _Weights(self.model, pset, self.used, self.buffers)

    # ------------------------------------------------------------------ propagation

    def forward(self, x: torch.Tensor, w: _Weights) -> torch.Tensor:
        vals: list[torch.Tensor | None] = []
        for n in self.nodes:
            vals.append(x if n.op is None else n.op.forward([vals[i] for i in n.inputs], w))
        return vals[self.output]

    def ibp(self, x: torch.Tensor, w: _Weights, bounds: list | None = None, start: int = 0) -> list[Bounds]:
        bounds = bounds if bounds is not None else [None] * len(self.nodes)
        for i in range(start, len(self.nodes)):
            n = self.nodes[i]
            bounds[i] = (x, x) if n.op is None else n.op.ibp([bounds[j] for j in n.inputs], w)
        return bounds

    def backward(self, start: int, C: torch.Tensor, bounds: list[Bounds], w: _Weights, *,
                 interval_inputs: bool = False, record: dict | None = None) -> torch.Tensor:
        """Lower bound (b, S) of C . node[start], with C (b, S, *shape). ``interval_inputs``: stop after
        the start node and concretise its inputs with their interval bounds (IBP with the spec merged).
        ``record``: filled with the coefficients (b, S, *shape) reaching each activation node."""
        const = C.new_zeros(C.shape[:2])
        lams: dict[int, torch.Tensor] = {start: C}
        for i in range(start, -1, -1):
            lam = lams.pop(i, None)
            if lam is None:
                continue
            n = self.nodes[i]
            if record is not None and isinstance(n.op, Activation):
                record[i] = lam
            if n.op is None or (interval_inputs and i != start):
                l, u = bounds[i]
                const = const + sum_rest(lam.clamp(min=0) * l.unsqueeze(1) + lam.clamp(max=0) * u.unsqueeze(1), 2)
                continue
            lam_ins, c = n.op.backward(lam, [bounds[j] for j in n.inputs], w)
            const = const + c
            for j, lj in zip(n.inputs, lam_ins):
                lams[j] = lj if j not in lams else lams[j] + lj
        return widen(const, -1, FINAL_SLACK)

    def _rows(self, start: int, b: int) -> int:
        biggest = max(math.prod(self.nodes[i].shape) for i in range(start + 1))
        return max(1, _BUDGET // max(1, b * biggest))

    def tighten(self, k: int, need: torch.Tensor, bounds: list[Bounds], w: _Weights) -> None:
        """Replace the bounds of node k, where ``need`` (b, N) is set, by backward-pass (CROWN) bounds."""
        l, u = bounds[k]
        b = l.shape[0]
        shape = l.shape[1:]
        lf, uf = l.reshape(b, -1).clone(), u.reshape(b, -1).clone()
        N = lf.shape[1]
        counts = need.sum(1)
        width = int(counts.max()) if b else 0
        if width == 0:
            return
        order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :width]   # needed neurons first
        valid = torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)
        step = max(1, self._rows(k, b) // 2)
        new_l, new_u = [], []
        for s in range(0, width, step):
            idx = order[:, s:s + step]
            m = idx.shape[1]
            C = torch.zeros(b, 2 * m, N, dtype=DTYPE)
            ones = valid[:, s:s + step].to(DTYPE)
            C[:, :m].scatter_(2, idx.unsqueeze(2), ones.unsqueeze(2))
            C[:, m:].scatter_(2, idx.unsqueeze(2), -ones.unsqueeze(2))
            lo = self.backward(k, C.reshape(b, 2 * m, *shape), bounds, w)
            new_l.append(lo[:, :m])
            new_u.append(-lo[:, m:])
        nl, nu = torch.cat(new_l, 1), torch.cat(new_u, 1)
        old_l, old_u = lf.gather(1, order), uf.gather(1, order)
        lf.scatter_(1, order, torch.where(valid, torch.maximum(old_l, nl), old_l))
        uf.scatter_(1, order, torch.where(valid, torch.minimum(old_u, nu), old_u))
        bounds[k] = (lf.reshape(l.shape), uf.reshape(u.shape))

    def lower(self, x: torch.Tensor, C: torch.Tensor, w: _Weights, method: str,
              intermediate: str = "crown", splits: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
              record: dict | None = None) -> torch.Tensor:
        """Lower bounds (b, S) of C . f(x) over the perturbation set, for method 'ibp' or 'crown'.

        ``splits`` (CROWN only): ReLU pre-activation node -> (lo, hi) of shape (b, N), bounds known to
        hold on the part of the set a row stands for (a branch of branch and bound: its parent's
        bounds, with 0 as lo or hi of the split neurons). They are intersected with the computed
        ones before CROWN tightens what is left unstable; the bound then holds on that part of the set.
        A row whose bounds contradict each other is empty and gets +inf. ``record`` receives the final
        pass's coefficients per activation node and the bounds ("bounds")."""
        bounds = self.ibp(x, w)
        if method == "ibp":
            return self.backward(self.output, C, bounds, w, interval_inputs=True)
        empty = None
        if intermediate == "crown":
            for k in sorted(self.preact):
                l, u = bounds[k]
                b = l.shape[0]
                if splits and k in splits:
                    lo, hi = splits[k]
                    l = torch.maximum(l.reshape(b, -1), lo).reshape(l.shape)
                    u = torch.minimum(u.reshape(b, -1), hi).reshape(u.shape)
                    bad = (l > u).reshape(b, -1).any(1)
                    empty = bad if empty is None else empty | bad
                    u = torch.maximum(u, l)                  # keep empty rows well-formed; they are discarded
                    bounds[k] = (l, u)
                need = ((l < 0) & (u > 0)) if self.preact[k] else (u > l)
                self.tighten(k, need.reshape(b, -1), bounds, w)
                self.ibp(x, w, bounds, start=k + 1)
        lb = self.backward(self.output, C, bounds, w, record=record)
        if record is not None:
            record["bounds"] = bounds
        return lb if empty is None else torch.where(empty.unsqueeze(1), math.inf, lb)


_CACHE: dict[int, tuple[nn.Module, tuple, _Graph]] = {}


def _graph(model: nn.Module, x: torch.Tensor) -> _Graph:
    """The traced graph of ``model`` (cached per model object and input shape)."""
    key = (tuple(x.shape[1:]), x.dtype)
    hit = _CACHE.get(id(model))
    if hit is not None and hit[0] is model and hit[1] == key:
        return hit[2]
    example = x[:2] if len(x) >= 2 else torch.cat([x, x])[:2]
    logits(model, (example, None))  # a model that cannot run on these inputs says so in its own words
    g = _Graph(model, example)
    _CACHE.clear()
    _CACHE[id(model)] = (model, key, g)
    return g
