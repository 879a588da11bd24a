"""Which tensors of an ONNX graph hwfault can inject faults into, and how they are stored.

An :class:`OnnxBinding` ties one model parameter (named as in the torch model it came from, e.g.
``conv1.weight``) to the initializer that holds it: a float32 tensor, or the integer codes of a QCDQ
weight (``Clip`` -> ``DequantizeLinear``), with its scale, zero point, code range and layout.
:func:`_find_bindings` walks the graph and finds them for the weight ops (Conv, Gemm, MatMul) and the
normalisation layers.

Before that, the graph is cut to what one output needs: :func:`choose_output` picks the output that
is scored (a name or index, or the default rule), :func:`scores_of` looks through a final
``Softmax`` to its input, and :func:`prune` keeps only the nodes and initializers that tensor depends
on, so operators elsewhere (a converter's label branch, ``ai.onnx.ml`` ops) are left alone.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from .errors import ModelError, did_you_mean

# op type -> (component type, {input index: parameter role})
_BINDABLE = {
    "Conv": ("conv", {1: "weight", 2: "bias"}),
    "Gemm": ("linear", {1: "weight", 2: "bias"}),
    "MatMul": ("linear", {1: "weight"}),
    "BatchNormalization": ("norm", {1: "weight", 2: "bias"}),
    "InstanceNormalization": ("norm", {1: "weight", 2: "bias"}),
    "LayerNormalization": ("norm", {1: "weight", 2: "bias"}),
}
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
_PARAM_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)+")


@dataclass(eq=False)
class OnnxBinding:
    """One injectable initializer of the file and the parameter that shows it.

    ``stored`` is the initializer as the file holds it. Integer bindings (QCDQ) also hold the
    ``scale`` and ``zero_point`` of their ``DequantizeLinear`` (broadcastable over ``stored``), the
    code range [``lo``, ``hi``] of an N = ``bits`` bit cell, and ``transpose`` says whether the
    parameter shows the initializer transposed (torch's (out, in) layout). ``flat``: the parameter
    shows a (1, ..., 1, n) bias (as skl2onnx stores them) as a vector of n.
    """

    name: str
    tensor: str
    node: str
    component: str
    stored: np.ndarray
    transpose: bool = False
    flat: bool = False
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    lo: int = 0
    hi: int = 0
    bits: int | None = None
    dq_nodes: list[int] = field(default_factory=list)  # positions of its DequantizeLinear nodes in the graph
    param: nn.Parameter | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    def values(self) -> np.ndarray:
        """The parameter's initial values: the stored floats, or the dequantised codes (float32)."""
        v = self.stored
        if self.quantized:
            v = ((v.astype(np.float32) - self.zero_point.astype(np.float32)) * self.scale).astype(np.float32)
        v = v.T if self.transpose else v
        return np.array(v.reshape(-1) if self.flat else v, dtype=np.float32, order="C", copy=True)

    def _current(self) -> np.ndarray:
        a = self.param.detach().cpu().numpy()
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if self.flat:
            return a.reshape(self.stored.shape)
        return a.T if self.transpose else a

    def codes(self) -> np.ndarray:
        """The integer codes the current parameter values encode to, in the stored layout and dtype."""
        q = np.rint(self._current() / self.scale)
        np.nan_to_num(q, copy=False, nan=0.0)
        q += self.zero_point
        return np.clip(q, self.lo, self.hi).astype(self.stored.dtype)

    def feed(self) -> np.ndarray:
        """What the session reads for this tensor now."""
        if self.quantized:
            return self.codes()
        a = self._current()
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    def describe(self) -> dict:
        out = {"name": self.name, "tensor": self.tensor, "node": self.node, "component": self.component,
               "shape": list(self.param.shape), "stored": str(self.stored.dtype), "transposed": self.transpose}
        if self.quantized:
            groups = self.scale.size
            q = np.abs(self.stored.astype(np.int64) - self.zero_point.astype(np.int64))
            qmax = 2 ** (self.bits - 1) - 1
            if groups > 1:
                axis = next(i for i, n in enumerate(self.scale.shape) if n > 1)
                peak = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1).max(axis=1)
            else:
                peak = np.array([q.max()])
            out.update(bits=self.bits, scale="per-channel" if groups > 1 else "per-tensor",
                       code_range=[self.lo, self.hi],
                       hwfault_grid=bool(np.all(peak == qmax) and not self.zero_point.any()))
        return out


def _array(t) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


class _Graph:
    """Producers, consumers and initializers of a graph, with Identity chains looked through."""

    def __init__(self, graph):
        self.inits = {t.name: t for t in graph.initializer}
        self.nodes = list(graph.node)  # one wrapper object per node, so that id() identifies it
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers[name].append((n, i))

    def resolve(self, name: str) -> str:
        seen = set()
        while name not in self.inits and name in self.producer and self.producer[name].op_type == "Identity":
            if name in seen:
                break
            seen.add(name)
            name = self.producer[name].input[0]
        return name

    def constant(self, name: str) -> np.ndarray | None:
        name = self.resolve(name)
        if name in self.inits:
            return _array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return _array(a.t)
        return None


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _source(g: _Graph, name: str, path: Path):
    """("float", initializer) | ("int", initializer, clip node or None, DequantizeLinear node) | None."""
    import onnx

    name = g.resolve(name)
    if name in g.inits:
        t = g.inits[name]
        if t.data_type == onnx.TensorProto.FLOAT:
            return ("float", name)
        if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE):
            kind = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name if t.data_type != onnx.TensorProto.BFLOAT16 \
                else "bfloat16"
            raise ModelError(f"{path}: initializer '{name}' is {kind}; hwfault injects into float32 or QCDQ integer "
                             f"weights")
        return None
    dq = g.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    src, clip = g.resolve(dq.input[0]), None
    prod = g.producer.get(src)
    if src not in g.inits and prod is not None and prod.op_type == "Clip":
        clip, src = prod, g.resolve(prod.input[0])
    if src not in g.inits or g.constant(dq.input[1]) is None:
        return None
    if len(dq.input) > 2 and dq.input[2] and g.constant(dq.input[2]) is None:
        return None
    return ("int", src, clip, dq)


def _quant_params(g: _Graph, stored: np.ndarray, clip, dq) -> dict:
    """Scale and zero point shaped to broadcast over ``stored``, and the code range and width."""
    scale = g.constant(dq.input[1]).astype(np.float32)
    zp = g.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), stored.dtype)
    if scale.size > 1:
        axis = _attr(dq, "axis", 1) % max(stored.ndim, 1)
        shape = [1] * stored.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), (zp.reshape(shape) if zp.size > 1 else zp.reshape(()))
    else:
        scale, zp = scale.reshape(()), zp.reshape(())
    info = np.iinfo(stored.dtype)
    lo, hi, bits = int(info.min), int(info.max), info.bits
    if clip is not None:
        cmin = g.constant(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else _attr(clip, "min")
        cmax = g.constant(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else _attr(clip, "max")
        if cmax is not None:
            top = int(np.asarray(cmax).reshape(-1)[0])
            signed = info.min < 0
            n = (top + 1).bit_length() if signed else top.bit_length()
            if 2 <= n <= bits and (2 ** (n - 1) - 1 if signed else 2 ** n - 1) == top:
                bits = n
                lo, hi = (-(2 ** (n - 1)), 2 ** (n - 1) - 1) if signed else (0, 2 ** n - 1)
            else:  # an odd range: keep exactly what the Clip allowed
                lo = int(np.asarray(cmin).reshape(-1)[0]) if cmin is not None else lo
                hi = top
    return {"scale": scale, "zero_point": zp.astype(np.float32), "lo": lo, "hi": hi, "bits": bits}


def _module_path(node_name: str) -> str | None:
    """``/layer1/conv1/Conv`` -> ``layer1.conv1`` (the TorchScript exporter's scope names)."""
    if not node_name.startswith("/"):
        return None
    parts = [p for p in node_name.strip("/").split("/") if p]
    return ".".join(parts[:-1]) if len(parts) >= 2 else None


def _clean(name: str) -> str:
    return re.sub(r"\W", "_", name).strip("_") or "tensor"


def _find_bindings(graph, path: Path) -> list[OnnxBinding]:
    """The injectable initializers, in node order (raises ModelError if no weight is among them)."""
    g = _Graph(graph)
    found: dict[str, OnnxBinding] = {}
    names: set[str] = set()

    def name_for(tensor: str, node, role: str) -> str:
        if _PARAM_NAME.fullmatch(tensor):
            candidate = tensor
        else:
            base = _module_path(node.name) or _clean(node.name or f"{node.op_type}_{len(found)}")
            candidate = f"{base}.{role}"
        out, i = candidate, 1
        while out in names:
            head, _, tail = candidate.rpartition(".")
            out = f"{head}_{i}.{tail}"
            i += 1
        names.add(out)
        return out

    def bind(tensor_name: str, node, comp: str, role: str, transpose_2d: bool,
             flat: bool = False) -> OnnxBinding | None:
        src = _source(g, tensor_name, path)
        if src is None:
            return None
        key = src[1]
        if key in found:
            b = found[key]
            if src[0] == "int" and g.position[id(src[3])] not in b.dq_nodes:
                b.dq_nodes.append(g.position[id(src[3])])
            return b
        stored = _array(g.inits[key])
        transpose = transpose_2d and stored.ndim == 2
        b = OnnxBinding(name="", tensor=key, node=node.name, component=comp, stored=stored, transpose=transpose,
                        flat=flat and stored.ndim > 1)
        if src[0] == "int":
            if not np.issubdtype(stored.dtype, np.integer):
                return None
            for k, v in _quant_params(g, stored, src[2], src[3]).items():
                setattr(b, k, v)
            b.dq_nodes.append(g.position[id(src[3])])
        b.name = name_for(key, node, role)
        found[key] = b
        return b

    weights = 0
    for node in g.nodes:
        spec = _BINDABLE.get(node.op_type)
        if spec is None:
            continue
        comp, slots = spec
        for idx, role in slots.items():
            if idx >= len(node.input) or not node.input[idx]:
                continue
            transpose = role == "weight" and (node.op_type == "MatMul" or
                                              (node.op_type == "Gemm" and not _attr(node, "transB", 0)))
            b = bind(node.input[idx], node, comp, role, transpose)
            if b is not None and role == "weight" and node.op_type in _WEIGHT_OPS:
                weights += 1
                if node.op_type == "MatMul":  # its bias is the initializer of the Add that follows
                    for add, i in g.consumers.get(node.output[0], []):
                        if add.op_type == "Add" and len(add.input) == 2:
                            other = add.input[1 - i]
                            src = _source(g, other, path)
                            shape = tuple(g.inits[src[1]].dims) if src is not None else ()
                            if src is not None and src[0] == "float" and len(shape) >= 1 \
                                    and all(d == 1 for d in shape[:-1]):  # (n,) or (1, ..., 1, n)
                                bind(other, node, comp, "bias", False, flat=True)
    if not weights:
        raise ModelError(f"{path}: nothing to inject: no Conv, Gemm or MatMul weight is stored as an initializer "
                         f"(float32, or integer codes feeding DequantizeLinear)")
    return list(found.values())


# ----------------------------------------------------------------------------- outputs and pruning

def _floating(elem: int) -> bool:
    from onnx import TensorProto

    return elem in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.UNDEFINED)


def _dtype_text(elem: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem).name
    except (KeyError, TypeError, ValueError):  # UNDEFINED (and any type onnx cannot map to numpy)
        return onnx.TensorProto.DataType.Name(elem).lower()


def _shape(vi) -> tuple | None:
    """The declared dims (int, a symbol, or '?'), or None when the rank is not declared."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)


def _type_text(tp) -> str:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return _dtype_text(tp.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"sequence<{_type_text(tp.sequence_type.elem_type)}>"
    if kind == "map_type":
        return f"map<{_dtype_text(tp.map_type.key_type)}, {_type_text(tp.map_type.value_type)}>"
    if kind == "optional_type":
        return f"optional<{_type_text(tp.optional_type.elem_type)}>"
    return kind or "untyped"


def _output_text(i: int, vi) -> str:
    text = f"{i} '{vi.name}' {_type_text(vi.type)}"
    if vi.type.WhichOneof("value") == "tensor_type":
        shape = _shape(vi)
        dims = "shape unknown" if shape is None else ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
        text += f" {dims}" if shape is None else f" ({dims})"
    return text


def outputs_text(graph) -> str:
    """``outputs: 0 'label' int64 (?,), 1 'probabilities' float32 (?, 10)``"""
    return "outputs: " + ", ".join(_output_text(i, o) for i, o in enumerate(graph.output))


def _is_zipmap(graph, vi) -> bool:
    if vi.type.WhichOneof("value") in ("sequence_type", "map_type"):
        return True
    return any(n.op_type == "ZipMap" and vi.name in n.output for n in graph.node)


_ZIPMAP = ("a ZipMap output (skl2onnx writes one by default) is a sequence of dicts, not a tensor of scores: "
           "convert with options={'zipmap': False}")
_PASS = "pass --output NAME|INDEX (output= in Python)"


def _check_scores(graph, i: int, path: Path) -> int:
    """``i`` if output ``i`` is a floating-point tensor, else a one-line ModelError."""
    vi = graph.output[i]
    if _is_zipmap(graph, vi):
        raise ModelError(f"{path}: output '{vi.name}' is {_type_text(vi.type)}: {_ZIPMAP} ({outputs_text(graph)})")
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type" or not _floating(vi.type.tensor_type.elem_type):
        others = [o.name for o in graph.output if o.type.WhichOneof("value") == "tensor_type"
                  and _floating(o.type.tensor_type.elem_type)]
        hint = f"; {_PASS} to score '{others[0]}'" if others else ""
        raise ModelError(f"{path}: output '{vi.name}' is {_type_text(vi.type)}: expected floating-point logits "
                         f"(class indices, e.g. an ArgMax output, cannot be scored or differentiated){hint}"
                         + (f" ({outputs_text(graph)})" if len(graph.output) > 1 else ""))
    return i


def choose_output(graph, output, path: Path) -> int:
    """The index of the output to score: ``output`` is a name, an index (int, negative from the end,
    or a str of digits) or None for the default (the only output; else the only floating-point one;
    else the only floating-point one of rank 2, (batch, classes)). Anything else is a one-line
    ModelError that lists the outputs."""
    outs = list(graph.output)
    if not outs:
        raise ModelError(f"{path}: the model has no output")
    names = [o.name for o in outs]
    if output is None:
        if len(outs) == 1:
            return _check_scores(graph, 0, path)
        floats = [i for i, o in enumerate(outs) if o.type.WhichOneof("value") == "tensor_type"
                  and _floating(o.type.tensor_type.elem_type)]
        if len(floats) == 1:
            return floats[0]
        if not floats:
            zipmap = any(_is_zipmap(graph, o) for o in outs)
            raise ModelError(f"{path}: no floating-point output to score ({outputs_text(graph)})"
                             + (f"; {_ZIPMAP}" if zipmap else "; class indices cannot be scored"))
        rank2 = [i for i in floats if (s := _shape(outs[i])) is not None and len(s) == 2]
        if len(rank2) == 1:
            return rank2[0]
        raise ModelError(f"{path}: {len(floats)} floating-point outputs and no single (batch, classes) one to "
                         f"score by default ({outputs_text(graph)}); {_PASS}")
    if isinstance(output, str) and output in names:
        return _check_scores(graph, names.index(output), path)
    if isinstance(output, bool) or not isinstance(output, (int, str)) or (
            isinstance(output, str) and not output.isdigit()):
        if isinstance(output, str):
            hint = did_you_mean(output, names)
            raise ModelError(f"{path}: no output named '{output}'{hint if 'did you mean' in hint else ''} "
                             f"({outputs_text(graph)}); {_PASS}")
        raise ModelError(f"{path}: expected an output name or index, got {type(output).__name__} {output!r} "
                         f"({outputs_text(graph)})")
    i = int(output)
    if not -len(outs) <= i < len(outs):
        raise ModelError(f"{path}: output index {i} out of range: the model has {len(outs)} output"
                         f"{'s' if len(outs) > 1 else ''} ({outputs_text(graph)}); {_PASS}")
    return _check_scores(graph, i % len(outs), path)


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def scores_of(proto, name: str) -> str:
    """The tensor whose values are scored for output ``name``: the input of a ``Softmax`` over the last
    axis that produces it (through Identity nodes), so that cross-entropy is the model's own NLL and
    saturated probabilities do not hide logit changes; otherwise ``name`` itself."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    rank = next((len(s) for o in graph.output if o.name == name and (s := _shape(o)) is not None), None)
    seen, cur = set(), name
    while cur in producer and producer[cur].op_type == "Identity" and cur not in seen:
        seen.add(cur)
        cur = producer[cur].input[0]
    node = producer.get(cur)
    if node is None or node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
        return name
    axis = _attr(node, "axis", -1 if _default_opset(proto) >= 13 else 1)
    last = axis == -1 or (rank is not None and axis == rank - 1)
    return node.input[0] if last and node.input[0] else name


def _subgraph_inputs(graph) -> set[str]:
    """Every name the nodes of a subgraph (and theirs) read: outer-scope values included."""
    out = set()
    for n in graph.node:
        out.update(i for i in n.input if i)
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out |= _subgraph_inputs(g)
    return out


def prune(proto, output_vi, path: Path):
    """A copy of ``proto`` whose only output is ``output_vi`` and that holds only the nodes,
    initializers, inputs and value infos that output depends on."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    needed, keep = {output_vi.name}, []
    for node in reversed(g.node):  # ONNX graphs are topologically sorted (onnx.checker holds us to it)
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    needed |= _subgraph_inputs(sub)
    keep.reverse()
    produced = {o for n in keep for o in n.output}
    inits = [t for t in g.initializer if t.name in needed]
    sparse = [t for t in g.sparse_initializer if t.values.name in needed]
    inputs = [i for i in g.input if i.name in needed]
    infos = [v for v in g.value_info if (v.name in produced or v.name in needed) and v.name != output_vi.name]
    had_data_input = any(i.name not in {t.name for t in g.initializer} for i in g.input)
    for field_, items in ((g.node, keep), (g.initializer, inits), (g.sparse_initializer, sparse),
                          (g.input, inputs), (g.value_info, infos), (g.output, [output_vi])):
        del field_[:]
        field_.extend(items)
    init_names = {t.name for t in inits}
    if had_data_input and not any(i.name not in init_names for i in g.input):
        raise ModelError(f"{path}: output '{output_vi.name}' does not depend on the model's input")
    return m


# ----------------------------------------------------------------------------- the module
