"""Choosing the parameters to corrupt, and applying a perturbation that is always undone bit-exactly.

Every parameter carries tags: its component type — ``conv``, ``linear``, ``norm``, ``embedding``,
``attention``, ``recurrent`` or ``elementwise``, from the module that owns it (a Linear inside a
MultiheadAttention is ``attention``) or the graph that reads it (below) — plus ``bias`` or
``weight`` from its name. Layers are the modules that own parameters directly, numbered in
registration order from 0 (negative positions count from the end). A :class:`Selection` is the
intersection of the filters given (globs on names, types, layer positions); within a filter,
alternatives are OR-ed.

Models loaded from a ``torch.export`` archive have lost their module types; their parameters are
typed by the operators that read them in the graph (the weight or bias of ``aten.conv*`` is conv; of
``linear``/``addmm``/``mm``/``matmul``: linear; ``embedding``: embedding; ``layer_norm``,
``batch_norm``, ``group_norm``: norm; ``lstm``/``gru``: recurrent; read only by elementwise ops such
as ``x * self.gate``: ``elementwise``, which the ONNX path does not inject into either, so both count
the same device weights; a bias added after its layer's matmul takes the layer's type, and a table
named like an embedding (``pos``, ``token``, ``embed``) stays ``embedding``). Views and casts (``t``,
``view``, ``permute``, ...) are looked through; a parameter read by several kinds of op takes the
first of conv, linear, attention, recurrent, embedding, norm, elementwise (a tied embedding that is
also the output projection is ``linear``, as in ONNX). Parameters of a module without a graph,
or not read in it, are typed from their shapes (4-D/3-D weight: conv; 2-D: linear; 1-D weight: norm).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SelectionError, did_you_mean
from .vocab import COMPONENT_TYPES, TAGS  # named once, without torch, for the chip spec too

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_CONVS = (nn.modules.conv._ConvNd,)
_RECURRENT = (nn.RNNBase,)
_EMBED = (nn.Embedding, nn.EmbeddingBag)


def _module_type(module: nn.Module) -> str | None:
    if isinstance(module, _CONVS):
        return "conv"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, _EMBED):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    if isinstance(module, _RECURRENT):
        return "recurrent"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "linear"
    return None


def _shape_type(name: str, weight: torch.Tensor | None) -> str:
    """Component type of an untyped layer without a graph that reads it, from its weight's shape."""
    if weight is None:
        return "linear"
    if weight.ndim >= 3:
        return "conv"
    if weight.ndim == 2:
        return "embedding" if any(t in name.lower() for t in ("embed", "pos", "token")) else "linear"
    return "norm"


# ATen (and torch.nn.functional / tensor-method) operator names -> the component type of what they read
_GRAPH_OPS = {
    **dict.fromkeys(("convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                     "conv_transpose2d", "conv_transpose3d", "conv_tbc", "mkldnn_convolution"), "conv"),
    **dict.fromkeys(("linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "addmv", "mv", "einsum", "bilinear",
                     "_addmm_activation"), "linear"),
    **dict.fromkeys(("embedding", "embedding_bag", "_embedding_bag", "index_select", "index", "take"), "embedding"),
    **dict.fromkeys(("layer_norm", "native_layer_norm", "batch_norm", "native_batch_norm",
                     "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                     "_native_batch_norm_legit_functional", "group_norm", "native_group_norm", "instance_norm",
                     "rms_norm", "_fused_rms_norm", "local_response_norm"), "norm"),
    **dict.fromkeys(("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
                     "rnn_relu_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell"), "recurrent"),
    **dict.fromkeys(("_native_multi_head_attention", "multi_head_attention_forward", "scaled_dot_product_attention"),
                    "attention"),
}
# ops that pass a tensor on (views, copies, casts): the parameter is typed by what reads their result
_LOOK_THROUGH = {
    "t", "permute", "transpose", "view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "unsqueeze",
    "squeeze", "clone", "contiguous", "detach", "alias", "_to_copy", "to", "type_as", "flatten", "unflatten",
    "select", "slice", "narrow", "getitem", "split", "split_with_sizes", "chunk", "unbind", "lift_fresh_copy",
    "view_as", "reshape_as", "expand_as", "float", "double", "half", "bfloat16", "movedim", "numpy_T",
    "_conj", "resolve_conj", "resolve_neg",
}
_PRIORITY = ("conv", "linear", "attention", "recurrent", "embedding", "norm", "elementwise")


def _op_name(node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op != "call_function":
        return None
    packet = getattr(node.target, "overloadpacket", None)  # an ATen OpOverload
    return getattr(packet if packet is not None else node.target, "__name__", None)


def _graph_types(model: nn.Module) -> dict[str, str]:
    """Component type of each parameter of a graph module (``torch.export`` or ``torch.fx``) from the
    operators that read it; parameters the graph does not read are left out."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return {}
    first: dict[int, str] = {}
    canonical = {name: first.setdefault(id(p), name)  # a tied parameter is read under each of its names
                 for name, p in model.named_parameters(remove_duplicate=False)}
    kinds: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.op != "get_attr" or str(node.target) not in canonical:
            continue
        found, stack, seen = kinds.setdefault(canonical[str(node.target)], set()), [node], {node}
        while stack:
            for user in stack.pop().users:
                name = _op_name(user)
                if name is None or user in seen:
                    continue
                seen.add(user)
                if name in _LOOK_THROUGH:
                    stack.append(user)
                else:
                    found.add(_GRAPH_OPS.get(name, "elementwise"))
    out = {}
    for name, found in kinds.items():
        if not found:
            continue
        comp = next(c for c in _PRIORITY if c in found)
        if comp == "elementwise" and any(t in name.lower() for t in ("embed", "pos", "token")):
            comp = "embedding"  # a learned positional/token table added to its input
        out[name] = comp
    for name, comp in list(out.items()):  # a bias added after its layer's matmul is that layer's
        layer, _, leaf = name.rpartition(".")
        weight = out.get(f"{layer}.weight" if layer else "weight")
        if comp == "elementwise" and leaf.endswith("bias") and weight not in (None, "elementwise"):
            out[name] = weight
    return out


@dataclass(frozen=True)
class ParamInfo:
    """A parameter's name, its owning layer, component type and position."""

    name: str
    layer: str
    component: str
    position: int
    numel: int
    shape: tuple[int, ...]

    @property
    def tags(self) -> frozenset[str]:
        kind = "bias" if self.name.rsplit(".", 1)[-1].endswith("bias") else "weight"
        return frozenset({self.component, kind})


def describe(model: nn.Module) -> list[ParamInfo]:
    """All trainable-parameter records of ``model`` in registration order."""
    owners: dict[str, tuple[str, str]] = {}  # param name -> (layer name, component)
    modules = dict(model.named_modules())
    for mname, module in modules.items():
        direct = list(module.named_parameters(recurse=False))
        if not direct:
            continue
        # the nearest typed ancestor wins for attention (its out_proj is an nn.Linear)
        comp = _module_type(module)
        parts = mname.split(".") if mname else []
        for i in range(len(parts) - 1, 0, -1):
            anc = modules.get(".".join(parts[:i]))
            if isinstance(anc, nn.MultiheadAttention):
                comp = "attention"
                break
        for pname, _ in direct:
            full = f"{mname}.{pname}" if mname else pname
            owners[full] = (mname, comp or "")
    infos: list[ParamInfo] = []
    layer_pos: dict[str, int] = {}
    named = dict(model.named_parameters())
    used = _graph_types(model)
    for name, p in named.items():
        layer, comp = owners.get(name, (name.rsplit(".", 1)[0] if "." in name else "", ""))
        if not comp:  # no typed module: how the graph uses it, else the layer's weight's shape
            comp = used.get(name) or _shape_type(name, named.get(f"{layer}.weight" if layer else "weight", p))
        layer_pos.setdefault(layer, len(layer_pos))
        infos.append(ParamInfo(name, layer, comp, layer_pos[layer], p.numel(), tuple(p.shape)))
    return infos


@dataclass(frozen=True)
class Selection:
    """An ordered set of a model's parameters: the subspace that gets corrupted.

    Perturbations over a selection are flat vectors of length :attr:`numel`, laid out parameter
    after parameter in :attr:`names` order (see :meth:`split` and :meth:`flatten`).
    """

    names: tuple[str, ...]
    params: tuple[torch.Tensor, ...]
    infos: tuple[ParamInfo, ...]

    @property
    def numel(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return len(self.params)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Where each parameter tensor starts in the flat layout, and the total length last."""
        out = [0]
        for p in self.params:
            out.append(out[-1] + p.numel())
        return tuple(out)

    def segments(self) -> list[tuple[int, int]]:
        """``[start, end)`` of each parameter tensor in the flat layout."""
        return list(zip(self.offsets[:-1], self.offsets[1:]))

    def locate(self, flat_index) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tensor index, index within that tensor)`` of flat positions (ints or an int tensor)."""
        idx = torch.as_tensor(flat_index, dtype=torch.long)
        t = torch.searchsorted(torch.tensor(self.offsets, dtype=torch.long), idx, right=True) - 1
        return t, idx - torch.tensor(self.offsets, dtype=torch.long)[t]

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Cut a flat vector into tensors shaped like the selected parameters."""
        if flat.numel() != self.numel:
            raise ValueError(f"expected a vector of {self.numel} elements, got {flat.numel()}")
        return [flat[a:b].view_as(p) for p, (a, b) in zip(self.params, self.segments())]

    def subset(self, indices) -> Selection:
        """The selection of the parameters at ``indices`` (positions in this selection), in order."""
        ix = list(indices)
        return Selection(tuple(self.names[i] for i in ix), tuple(self.params[i] for i in ix),
                         tuple(self.infos[i] for i in ix))

    def weights_only(self) -> Selection:
        """The weight tensors of this selection (no biases)."""
        return self.subset(i for i, info in enumerate(self.infos) if "weight" in info.tags)

    def values(self) -> torch.Tensor:
        """The current parameter values as one flat vector (a copy)."""
        return self.flatten([p.detach() for p in self.params]).clone()

    def groups(self, by: str) -> dict[str, Selection]:
        """Sub-selections per ``component`` type or per ``layer``, in model order."""
        if by not in ("component", "layer"):
            raise SelectionError(f"expected --by component or layer, got '{by}'")
        keyed: dict[str, list[int]] = {}
        for i, info in enumerate(self.infos):
            keyed.setdefault(info.component if by == "component" else info.layer or info.name, []).append(i)
        return {k: self.subset(ix) for k, ix in keyed.items()}


def _as_list(v: str | Iterable | None, what: str = "filter") -> list:
    if v is None:
        return []
    if isinstance(v, str):
        items = [s.strip() for s in v.split(",") if s.strip()]
        if not items:
            raise SelectionError(f"expected at least one name in --{what}, got '{v}'")
        return items
    if isinstance(v, int):
        return [v]
    return list(v)


def select(model: nn.Module, params: str | Iterable[str] | None = None, *,
           types: str | Iterable[str] | None = None, layers: str | Iterable[int] | None = None) -> Selection:
    """Select parameters by name globs, component types/tags and layer positions (all filters AND-ed).

    With no filter, every parameter is selected (the paper's n = k setting over all of w).
    """
    infos = describe(model)
    named = dict(model.named_parameters())
    if not infos:
        raise SelectionError("the model has no parameters")
    globs, tys = _as_list(params, "params"), _as_list(types, "types")
    for t in tys:
        if t not in TAGS:
            raise SelectionError(f"unknown component type '{t}'{did_you_mean(t, TAGS)}")
    try:
        pos = [int(v) for v in _as_list(layers, "layers")]
    except ValueError:
        raise SelectionError(f"expected integer layer positions, got '{layers}'") from None
    n_layers = infos[-1].position + 1
    for v in pos:
        if not -n_layers <= v < n_layers:
            raise SelectionError(f"layer position {v} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    pos = {v % n_layers for v in pos}
    chosen = [i for i in infos
              if (not globs or any(fnmatch.fnmatchcase(i.name, g) for g in globs))
              and (not tys or i.tags & set(tys))
              and (not pos or i.position in pos)]
    if not chosen:
        what = ", ".join(filter(None, [f"params {globs}" if globs else "", f"types {tys}" if tys else "",
                                       f"layers {sorted(pos)}" if pos else ""]))
        hint = did_you_mean(globs[0], [i.name for i in infos]) if globs else ""
        raise SelectionError(f"no parameter matches {what}{hint}")
    return Selection(tuple(i.name for i in chosen), tuple(named[i.name] for i in chosen), tuple(chosen))


@contextlib.contextmanager
def perturbed(selection: Selection, delta: torch.Tensor | Sequence[torch.Tensor] | None) -> Iterator[None]:
    """Add ``delta`` (flat, or one tensor per selected parameter) to the parameters in place for the
    duration of the block; the original values are restored bit-exactly on exit, also on exceptions.
    ``None`` (or an all-zero delta) leaves the parameters untouched. A delta on another device than its
    parameter (a CPU delta for a model on a GPU) is moved to the parameter's device; the saved copy
    stays on the parameter's device.
    """
    if delta is None:
        yield
        return
    parts = selection.split(delta) if isinstance(delta, torch.Tensor) else list(delta)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p, d in zip(selection.params, parts):
                if d is None or not torch.any(d):
                    continue
                saved.append((p, p.detach().clone()))
                p.add_(d.to(p.device, p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, orig in saved:
                p.copy_(orig)
