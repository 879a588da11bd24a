"""ONNX files whose weights are stored in hwfault's block formats (:mod:`hwfault.blockformats`).

The weights of every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` are encoded with
:func:`hwfault.blockformats.encode` and written as the format's own codes; ``DequantizeLinear`` turns
them back into float32 weights in the graph, bit for bit the values ``fmt.quantize(w)`` gives:

``fp8_e4m3`` / ``fp8_e5m2``  FLOAT8E4M3FN / FLOAT8E5M2 initializers (the weight's shape) and the
                             fp32 tensor scale; ``DequantizeLinear`` per tensor (opset 19).
``intN-gG``                  two's complement codes in INT4 (N <= 4), INT8 (N <= 8) or INT16 (N <= 16)
                             initializers of shape (out, K), one FLOAT16 scale per group of G along K
                             (out, ceil(K / G)), ``Cast`` to float32, blocked ``DequantizeLinear``
                             (``axis`` 1, ``block_size`` G; opset 21), ``Reshape`` back for a Conv.
``mxfp8_e4m3`` / ``mxfp8_e5m2`` / ``mxint8``
                             float8 / INT8 elements, blocks of 32 along K, FLOAT8E8M0 scales ``Cast``
                             to float32 (onnxruntime reads E8M0 only through ``Cast``, opset 24),
                             blocked ``DequantizeLinear``; MXINT8 then ``Mul`` by 2^-6.

Codes and scales are stored in hwfault's layout (the weight's shape for FP8, (out, K) for blocks). A
weight the TorchScript exporter folded into its transpose (a Linear applied to 3-D input exports as
``MatMul`` with the (K, out) transpose) gets a ``Transpose`` after its dequantization (onnxruntime
fuses a blocked ``DequantizeLinear`` straight into ``MatMul`` into a kernel of its own, whose
arithmetic missed parity by 0.3 logits on mnist1d-transformer). Every ``element * scale`` is
exact in float32 up to its one final rounding, as in hwfault, so the file's weights are hwfault's;
:func:`check_weights` checks that in onnxruntime, bit for bit, before the file is written.

The Linear/Conv layers are those of :mod:`hwfault.quant` plus the ones inside attention modules
(their weights are replaced in a copy of the model, not wrapped, so fused paths read them too); other
weights (embeddings, recurrent layers, norms) and all biases stay float32. Refused (:data:`REFUSED`):
the formats whose elements onnxruntime cannot read.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

from .blockformats import BlockFormat, StoredBlockFormat, encode
from .errors import ExportError, SpecError, did_you_mean
from .vocab import BLOCK_FORMATS

__all__ = ["OPSET", "REFUSED", "block_format", "check_opset", "quantized_copy", "store_weights", "check_weights",
           "storage_text"]

#: the lowest opset (and default) that runs each format in onnxruntime
OPSET = {"fp8_e4m3": 19, "fp8_e5m2": 19, "int": 21, "mxfp8_e4m3": 24, "mxfp8_e5m2": 24, "mxint8": 24}
_NO_KERNEL = "onnxruntime 1.32 has no CPU kernel (DequantizeLinear or Cast, any opset) that reads its {} elements"
#: block formats that cannot be exported, and why (checked in onnxruntime 1.32, opsets 19-28)
REFUSED = {"mxfp6_e2m3": _NO_KERNEL.format("FLOAT6E2M3"), "mxfp6_e3m2": _NO_KERNEL.format("FLOAT6E3M2"),
           "mxfp4": _NO_KERNEL.format("FLOAT4E2M1"), "nvfp4": _NO_KERNEL.format("FLOAT4E2M1")}
assert set(OPSET) | set(REFUSED) == set(BLOCK_FORMATS) | {"int"}
TORCHSCRIPT_MAX_OPSET = 20
_GROUP = re.compile(r"int(\d+)-g(\d+)")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _onnx_type(name: str) -> int:
    import onnx

    return getattr(onnx.TensorProto, name)


def _element_type(fmt: BlockFormat) -> str:
    if fmt.kind == "int":
        return "INT4" if fmt.bits <= 4 else "INT8" if fmt.bits <= 8 else "INT16"
    if fmt.kind == "mxint8":
        return "INT8"
    return "FLOAT8E4M3FN" if fmt.element.name == "e4m3" else "FLOAT8E5M2"


def _scale_type(fmt: BlockFormat) -> str:
    return {"fp32": "FLOAT", "fp16": "FLOAT16", "e8m0": "FLOAT8E8M0"}[fmt.scale_type]


def storage_text(fmt: BlockFormat, opset: int) -> str:
    """How the file stores ``fmt`` (the ``hwfault_storage`` metadata)."""
    el = _element_type(fmt)
    if fmt.kind == "int" and el != f"INT{fmt.bits}":
        el = f"{el} (holding int{fmt.bits} codes)"
    if fmt.group == 0:
        return f"{el} weights, one FLOAT scale per tensor, DequantizeLinear, opset {opset}"
    tail = ", then x 2^-6" if fmt.kind == "mxint8" else ""
    return (f"{el} weights, one {_scale_type(fmt)} scale per {fmt.group} weights along the reduction dimension "
            f"(Cast to FLOAT), blocked DequantizeLinear{tail}, opset {opset}")


def block_format(fmt: str, spec) -> BlockFormat | None:
    """The block format an export of ``fmt`` (on chip ``spec``, or None) writes, or None for the fp32 and
    per-tensor / per-channel intN exports. ``intN-gG`` names a group-wise intN; an int export on a
    per-group chip takes the chip's group. Refused formats and conflicts with the chip raise
    :class:`~hwfault.errors.ExportError` (before anything is exported)."""
    f = str(fmt).strip().lower()
    chip = spec.format if spec is not None else None
    chip_block = None
    if chip is not None and chip.kind in BLOCK_FORMATS:
        chip_block = BlockFormat(chip.kind)
    elif chip is not None and chip.scale == "per-group":
        chip_block = BlockFormat("int", int(chip.kind[3:]), int(chip.group_size))
    if f in REFUSED:
        raise ExportError(f"cannot export {f}: {REFUSED[f]}; exportable block formats: {', '.join(_exportable())}")
    m = _GROUP.fullmatch(f)
    if f in BLOCK_FORMATS:
        out = BlockFormat(f)
    elif m:
        try:
            out = BlockFormat("int", int(m.group(1)), int(m.group(2)))
        except SpecError as e:
            raise ExportError(f"export format {f}: {e}") from None
    elif chip_block is not None and chip_block.kind == "int" and f.startswith("int") and f[3:].isdigit():
        if f != "int8" and f != chip.kind:  # int8 means "the chip's intN", as for per-tensor chips
            raise ExportError(f"export format {f} conflicts with chip '{spec.name}' format {chip_block.name}")
        return chip_block
    else:
        return None
    if chip_block is not None and chip_block != out:
        raise ExportError(f"export format {out.name} conflicts with chip '{spec.name}' format {chip_block.name}")
    return out


def _exportable() -> list[str]:
    return [k for k in OPSET if k != "int"] + ["intN-gG"]


def format_hint(fmt: str) -> str:
    """A did-you-mean over every export format name, for an unknown ``fmt``."""
    names = ("fp32", "int8", "int4", "int4-g128", "int4-g32", "int8-g128", *BLOCK_FORMATS)
    return did_you_mean(str(fmt).strip().lower(), names)


def check_opset(opset, fmt: BlockFormat) -> int:
    import onnx

    lo, hi = OPSET[fmt.kind], onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not lo <= int(opset) <= hi:
        raise ExportError(f"expected --opset in {lo}..{hi} for a {fmt.name} export, got {opset}")
    return int(opset)


# ----------------------------------------------------------------------------- the reference model


def quantized_copy(model: nn.Module, fmt: BlockFormat) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(a copy of ``model`` whose Linear/Conv weights are ``fmt``'s stored values, {layer: its float
    weight}). Raises :class:`~hwfault.errors.ExportError` when the model has no such layer."""
    import copy

    if isinstance(model, torch.fx.GraphModule):
        raise ExportError(f"cannot store a traced GraphModule's weights as {fmt.name}: it has no Linear/Conv "
                          "modules left; export the model from its source instead")
    ref = copy.deepcopy(model)
    q = StoredBlockFormat(fmt)
    layers, seen = {}, set()
    with torch.no_grad():
        for name, m in ref.named_modules():
            w = getattr(m, "weight", None)
            if isinstance(m, _LAYERS) and isinstance(w, torch.Tensor) and id(w) not in seen:  # a tied weight once
                seen.add(id(w))
                layers[name] = w.detach().clone()
                m.weight.copy_(q.quantize(m.weight.detach()).to(m.weight.dtype))
    if not layers:
        raise ExportError(f"nothing to store as {fmt.name} in {type(model).__name__}: no nn.Linear, nn.Conv1d or "
                          "nn.Conv2d layer")
    return ref, layers


# ----------------------------------------------------------------------------- the graph


def _raw(codes: np.ndarray, onnx_type: str) -> bytes:
    """Little-endian bytes of unsigned ``codes`` (int64 bit patterns) as ``onnx_type`` stores them."""
    c = codes.reshape(-1).astype(np.int64)
    if onnx_type == "INT4":
        c = c & 0xF
        if c.size % 2:
            c = np.append(c, 0)
        return (c[0::2] | (c[1::2] << 4)).astype(np.uint8).tobytes()  # first element in the low nibble
    width = {"INT16": "<u2", "FLOAT16": "<u2", "FLOAT": "<u4"}.get(onnx_type, "u1")
    return (c & ((1 << (8 * np.dtype(width).itemsize)) - 1)).astype(width).tobytes()


def _tensor(name: str, onnx_type: str, dims, raw: bytes):
    import onnx

    t = onnx.TensorProto()
    t.name, t.data_type = name, _onnx_type(onnx_type)
    t.dims.extend(int(d) for d in dims)
    t.raw_data = raw
    return t


def _find(proto, name: str, want: np.ndarray, skip: set) -> tuple[str, bool] | None:
    """(initializer name, transposed) of the exported weight ``name`` holding ``want``: by name, else the
    float initializer holding ``want`` (a tied weight exported under another name) or its transpose."""
    from onnx import numpy_helper

    inits = [t for t in proto.graph.initializer if t.name not in skip and t.data_type == _onnx_type("FLOAT")]
    for t in inits:
        if t.name == name and np.array_equal(numpy_helper.to_array(t), want):
            return name, False
    for transposed, shape in ((False, want.shape), (True, want.T.shape if want.ndim == 2 else None)):
        for t in inits:
            if tuple(t.dims) == shape and np.array_equal(numpy_helper.to_array(t), want.T if transposed else want):
                return t.name, transposed
    return None


def store_weights(proto, reference: nn.Module, layers, fmt: BlockFormat) -> dict[str, np.ndarray]:
    """Replace, in ``proto`` (exported from ``reference``), the float initializer of every layer's
    weight by ``fmt``'s codes and scales and the nodes that dequantize them under the initializer's name.
    Returns {initializer name: the float32 weight the graph must compute} for :func:`check_weights`."""
    import onnx
    from onnx import helper

    params = dict(reference.named_modules())
    taken = {t.name for t in proto.graph.initializer} | {o for n in proto.graph.node for o in n.output} | \
        {i.name for i in proto.graph.input}
    nodes, inits, drop, expected = [], [], set(), {}
    el_type, sc_type = _element_type(fmt), _scale_type(fmt)
    for layer in layers:
        w = params[layer].weight.detach().float()
        want = w.numpy()
        hit = _find(proto, f"{layer}.weight" if layer else "weight", want, drop)
        if hit is None:
            raise ExportError(f"cannot store layer '{layer}' as {fmt.name}: its weight is not an initializer of the "
                              "exported graph (the exporter transformed it)")
        iname, transposed = hit
        b = encode(layers[layer], fmt)
        codes = b.elements[:, :b.k].numpy()  # (out, K): the padding of the last block dropped
        if fmt.kind == "int":  # N-bit patterns -> two's complement in the (wider) container
            codes = np.where(codes >= 1 << (fmt.bits - 1), codes - (1 << fmt.bits), codes)
        pre = f"{iname}_{fmt.name}"
        consts, steps = [], []  # steps after the codes: (op, inputs besides the running tensor, attributes)
        if fmt.group == 0:  # FP8: the weight's own shape, one fp32 scale
            consts += [_tensor(f"{pre}_codes", el_type, want.shape, _raw(codes, el_type)),
                       _tensor(f"{pre}_scale", "FLOAT", (), _raw(b.scales.numpy(), "FLOAT"))]
            steps.append(("DequantizeLinear", [f"{pre}_scale"], {}))
        else:  # (out, K) codes, (out, blocks) scales, blocks along axis 1
            sc = b.scales.numpy()
            consts += [_tensor(f"{pre}_codes", el_type, codes.shape, _raw(codes, el_type)),
                       _tensor(f"{pre}_scales", sc_type, sc.shape, _raw(sc, sc_type))]
            nodes.append(helper.make_node("Cast", [f"{pre}_scales"], [f"{pre}_scales_f32"], to=_onnx_type("FLOAT"),
                                          name=f"{pre}_Cast"))
            steps.append(("DequantizeLinear", [f"{pre}_scales_f32"], {"axis": 1, "block_size": fmt.group}))
            if fmt.kind == "mxint8":  # elements k mean k / 64
                consts.append(onnx.numpy_helper.from_array(np.array(2.0 ** -6, np.float32), f"{pre}_inv64"))
                steps.append(("Mul", [f"{pre}_inv64"], {}))
            if want.ndim != 2:  # back to the Conv weight's shape
                consts.append(onnx.numpy_helper.from_array(np.array(want.shape, np.int64), f"{pre}_shape"))
                steps.append(("Reshape", [f"{pre}_shape"], {}))
        if transposed:  # the exporter folded the weight into its transpose: so does the graph
            steps.append(("Transpose", [], {"perm": [1, 0]}))
        outs = [f"{pre}_{op}" for op, _, _ in steps[:-1]] + [iname]
        clash = taken & ({t.name for t in consts} | set(outs[:-1]) | {f"{pre}_scales_f32"})
        if clash:
            raise ExportError(f"cannot store layer '{layer}': the graph already has a tensor named {sorted(clash)[0]}")
        cur = f"{pre}_codes"
        for (op, extra, attrs), out in zip(steps, outs, strict=True):
            nodes.append(helper.make_node(op, [cur, *extra], [out], name=f"{pre}_{op}", **attrs))
            cur = out
        inits += consts
        drop.add(iname)
        expected[iname] = want.T.copy() if transposed else want
    keep = [t for t in proto.graph.initializer if t.name not in drop]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep + inits)
    rest = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + rest)
    return expected


def set_opset(proto, opset: int):
    """``proto`` (from the TorchScript exporter, opset <= 20) at ``opset``, its IR version high enough."""
    import onnx
    from onnx import version_converter

    have = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if have != opset:
        try:
            proto = version_converter.convert_version(proto, opset)
        except Exception as e:  # the converter's own errors
            raise ExportError(f"cannot convert the exported graph from opset {have} to {opset}: "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") \
                from None
    ids = [onnx.helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
    proto.ir_version = max(proto.ir_version, onnx.helper.find_min_ir_version_for(ids))
    return proto


def check_weights(proto, expected: dict[str, np.ndarray], fmt: BlockFormat) -> None:
    """Run the file's dequantization in onnxruntime and require every weight to equal ``expected`` bit for
    bit; an :class:`~hwfault.errors.ExportError` names the first that does not."""
    import onnx

    from .errors import first_line
    from .onnxio import ort_session

    need, nodes, inits = set(expected), [], {t.name: t for t in proto.graph.initializer}
    for n in reversed(proto.graph.node):  # the nodes the weights come from (they come first: a backward slice)
        if need & set(n.output):
            nodes.append(n)
            need |= set(n.input)
    outs = [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in expected.items()]
    graph = onnx.helper.make_graph(nodes[::-1], "weights", [], outs, initializer=[inits[k] for k in need if k in inits])
    probe = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    try:
        got = ort_session(probe, threads=1).run(list(expected), {})
    except Exception as e:  # onnxruntime's own exception types
        raise ExportError(f"onnxruntime cannot dequantize the {fmt.name} weights: {first_line(e)}") from None
    for (name, want), have in zip(expected.items(), got, strict=True):
        a, b = np.ascontiguousarray(have, np.float32), np.ascontiguousarray(want, np.float32)
        if a.shape != b.shape or not np.array_equal(a.view(np.uint32), b.view(np.uint32)):
            bad = int(np.sum(a.view(np.uint32) != b.view(np.uint32))) if a.shape == b.shape else math.prod(b.shape)
            raise ExportError(f"the {fmt.name} weights of '{name}' in onnxruntime differ from hwfault's in {bad} of "
                              f"{b.size} values")
