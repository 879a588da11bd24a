"""Deployment: the model as an ONNX file that checks itself.

:func:`export_onnx` writes one of two files:

``fp32``  the float model, through the TorchScript-based ``torch.onnx`` exporter (opset 17 by
          default) with BatchNorm kept as its own op, so the initializers are the model's parameters
          under their own names (``conv1.weight``); models from a ``torch.export`` archive (an fx
          GraphModule) go through the dynamo exporter instead (opset 18, graph not optimised, saved as
          one file even when the exporter would split off external data).
``intN``  (``int8``, or the chip's ``intN`` for N in 2..8) weight-only integer: the model is
          quantised with :func:`hwfault.quant.quantize_model` (hwfault's intN rule, per tensor or per
          output channel as the chip says) and exported by brevitas as QCDQ (opset 13 by default):
          integer weight initializers -> [Clip for a narrow range] -> DequantizeLinear -> float
          Conv/Gemm; activations, biases and BatchNorm stay float.
block     (``fp8_e4m3``, ``fp8_e5m2``, ``intN-gG`` (intN, one fp16 scale per G weights), ``mxfp8_e4m3``,
          ``mxfp8_e5m2``, ``mxint8``) the Linear/Conv weights stored as hwfault's codes of the format
          (:mod:`hwfault.blockexport`): the TorchScript export of the model at the quantised weights, whose
          weight initializers are replaced by float8 / int4 / int8 / int16 codes and their scales and
          ``DequantizeLinear`` (opset 19 for FP8, 21 for intN-gG, 24 for MX by default). The dequantised
          weights are checked in onnxruntime to equal ``fmt.quantize(w)`` bit for bit before parity.
          ``mxfp6_*``, ``mxfp4`` and ``nvfp4`` are refused (onnxruntime cannot read their elements).

Every export checks itself before the file appears: ``onnx.checker`` (full check), then onnxruntime
(CPU, one thread) on the evaluation data (or a random sample of the input shape) against the torch
model the file was made from (the brevitas model for intN, the model at the quantised weights for a
block format; the float model is reported beside them). Pass criteria: fp32 and block formats (whose
weights are the reference's, bit for bit) max |delta logit| <= 1e-4 and 100% top-1 agreement; intN
agreement >= 99.5% and |accuracy difference| <= 0.5 points. A file that fails parity is still
written, and its :class:`ExportReport` says why (``passed`` False); a file that cannot be exported,
fails the checker or (block formats) whose weights are not hwfault's raises
:class:`~hwfault.errors.ExportError` and nothing is written. Files are written atomically.

The file carries ``metadata_props`` (read back with :func:`read_metadata`): ``hwfault_version``,
``hwfault_format``, ``hwfault_scale``, ``hwfault_exporter``, ``hwfault_input_shape``, ``hwfault_parity``,
``hwfault_chip`` (the spec as TOML) and ``hwfault_chip_name`` when a chip is given, plus one
``hwfault_<key>`` per entry of the caller's ``metadata`` (e.g. ``source_model``, ``robustness``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .devices import device_of
from .errors import ExportError, HwfaultError, OutputError, first_line as _first_line
from .evaluation import differentiable, model_input
from .inputs import analysis
from .tasks import current
from .files import atomic_write, check_output
from .onnxio import meta_props as _meta_props, metadata_of, ort_session, read_metadata, set_props as _set_props

__all__ = ["export_onnx", "ExportReport", "read_metadata", "ort_session", "FORMATS", "FP32_MAX_DELTA",
           "INT_MIN_AGREEMENT", "INT_MAX_ACCURACY_DIFF"]

FORMATS = ("fp32",) + tuple(f"int{n}" for n in range(2, 9))
FP32_MAX_DELTA = 1e-4
INT_MIN_AGREEMENT = 0.995
INT_MAX_ACCURACY_DIFF = 0.005  # 0.5 percentage points, as a fraction
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18, "brevitas-qcdq": 13}
RANDOM_SAMPLES = 64
_BATCH = 1024


@dataclass(frozen=True)
class ExportReport:
    """What was written and how the file compares with the torch model in onnxruntime.

    Accuracies and agreements are fractions in [0, 1]. ``reference`` is the torch model the file is
    held to (the brevitas model for intN files, the model at the stored weights for block formats);
    ``float_*`` compare an intN or block-format file with the float model it was quantised from (None
    for fp32). ``failures`` lists the parity criteria not met.
    """

    path: str
    format: str
    scale: str | None
    exporter: str
    opset: int
    input_shape: tuple
    reference: str
    data: str
    n: int
    max_abs_delta: float
    agreement: float
    reference_accuracy: float | None
    onnx_accuracy: float | None
    accuracy_diff: float | None
    float_accuracy: float | None
    float_agreement: float | None
    float_accuracy_diff: float | None
    initializers: dict
    size_bytes: int
    seconds: float
    metadata: dict = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    passed: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["failures"] = list(self.failures)
        return d


# ----------------------------------------------------------------------------- helpers


def _parse_format(fmt: str, spec) -> tuple[str, int | None]:
    """(format name, bits or None for fp32); an intN chip sets N for an int export."""
    from .blockexport import format_hint

    f = str(fmt).strip().lower()
    if f not in FORMATS:
        raise ExportError(f"expected an export format fp32 or int8 (intN with N in 2..8; intN-gG for one fp16 scale "
                          f"per G weights; fp8_e4m3, fp8_e5m2, mxfp8_e4m3, mxfp8_e5m2, mxint8), got '{fmt}'"
                          f"{format_hint(f)}")
    if f == "fp32":
        return f, None
    bits = int(f[3:])
    kind = spec.format.kind if spec is not None else None
    if kind and kind.startswith("int"):
        chip_bits = int(kind[3:])
        if chip_bits > 8:
            raise ExportError(f"chip '{spec.name}' stores {kind} weights; QCDQ export (int8 containers) supports "
                              f"int2 .. int8")
        if f != "int8" and chip_bits != bits:
            raise ExportError(f"export format {f} conflicts with chip '{spec.name}' format {kind}")
        bits = chip_bits
    return f"int{bits}", bits


def _formats(fmt: str, spec):
    """(block format or None, format name, bits or None): a block format (:mod:`hwfault.blockexport`),
    else fp32 or a per-tensor / per-channel intN (:func:`_parse_format`)."""
    from .blockexport import block_format

    block = block_format(fmt, spec)
    return (block, block.name, None) if block is not None else (None, *_parse_format(fmt, spec))


def _resolve_chip(chip):
    if chip is None:
        return None
    from .spec import ChipSpec, load_chip

    return chip if isinstance(chip, ChipSpec) else load_chip(chip)


def _initializer_types(proto) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for t in proto.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- exporters


#: the opsets each exporter writes (torch.onnx's TorchScript exporter: 7-20; QCDQ needs QuantizeLinear
#: with per-axis scales, opset 13; the dynamo exporter starts at 18)
OPSETS = {"torchscript": (7, 20), "dynamo": (18, None), "brevitas-qcdq": (13, 20)}


def _check_opset(opset, exporter: str) -> int:
    import onnx

    lo, hi = OPSETS[exporter]
    hi = hi or onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not lo <= int(opset) <= hi:
        raise ExportError(f"expected --opset in {lo}..{hi} for the {exporter} exporter, got {opset}")
    return int(opset)


@contextlib.contextmanager
def _quiet_fds():
    """Exporters print to the process's stdout/stderr from C++ (graph dumps on failure): send those
    bytes to a scratch file for the duration, so the CLI's output stays its own."""
    import sys

    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def _scratch(out_path: Path):
    """A temporary directory for the exporters' own files (removed afterwards, also on failure)."""
    try:
        tmp = tempfile.TemporaryDirectory(prefix=f".{out_path.name}.")
    except OSError as e:
        raise OutputError(f"cannot export {out_path}: no room for temporary files ({e.strerror or e})") from None
    try:
        yield tmp.name
    finally:
        with contextlib.suppress(OSError):
            tmp.cleanup()


def _example(sample: torch.Tensor) -> torch.Tensor:
    """An example batch of at least 2 inputs (a batch of 1 would let exporters fix the batch size)."""
    sample = model_input(sample.detach(), current())
    return sample if sample.shape[0] >= 2 else sample[:1].expand(2, *sample.shape[1:]).contiguous()


_IO = dict(input_names=["x"], output_names=["logits"])
_AXES = {"x": {0: "batch"}, "logits": {0: "batch"}}


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, opset: int):
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PRESERVE keeps BatchNorm as its own op (EVAL would fold it into the conv weights and rename
        # them), so the file's initializers are the model's parameters, one to one.
        # keep_initializers_as_inputs=True skips the exporter's deduplication of equal-valued initializers
        # (e.g. two BatchNorm biases trained to the same values), which would tie two parameters into one.
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, dynamic_axes=_AXES,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                          keep_initializers_as_inputs=True, **_IO)
    return _strip_initializer_inputs(onnx.load(str(path)))


def _export_dynamo(model: nn.Module, x: torch.Tensor, opset: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, optimize=False, verbose=False,
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **_IO)
    return prog.model_proto  # in memory with its weights: saved below as one file, no external data


def _export_qcdq(qmodel: nn.Module, x: torch.Tensor, path: Path, opset: int):
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(qmodel, x, export_path=str(path), opset_version=opset, dynamo=False,
                         keep_initializers_as_inputs=True, dynamic_axes=_AXES, **_IO)  # no dedup, as above
    return _strip_initializer_inputs(onnx.load(str(path)))


def _strip_initializer_inputs(proto):
    """Drop the graph inputs that only repeat initializers: the deployed file has one input, ``x``."""
    inits = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in inits]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    return proto


# ----------------------------------------------------------------------------- parity


def _run_ort(session, x: torch.Tensor) -> torch.Tensor:
    inp = session.get_inputs()[0]
    arr = (x.detach().long() if inp.type == "tensor(int64)" else x.detach().float()).contiguous().numpy()
    name = inp.name
    outs = [session.run(None, {name: arr[i:i + _BATCH]})[0] for i in range(0, len(arr), _BATCH)]
    return torch.from_numpy(np.concatenate(outs)).float()


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Top-1 agreement of two outputs (per input, or per token for (batch, T, vocab) logits); for
    regression, the share of inputs whose outputs agree within the task's tolerance."""
    t = current()
    if t.name == "regression":
        d = (a.double() - b.double()).reshape(a.shape[0], -1).abs()
        return float((d <= t.tolerance).all(1).double().mean())
    return float((a.argmax(dim=-1) == b.argmax(dim=-1)).double().mean())


def _max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.double() - b.double()).abs()
    return float(d.max()) if torch.isfinite(d).all() else float("inf")


# ----------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """The model in eval mode, with the Transformer layers' fused inference kernel (which has no ONNX
    export) off, for the export and the comparison; both restored afterwards."""
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            model.train(was_training)


def _check_inputs(data, sample_input):
    """(x, y, example batch, label of the parity data): the evaluation data, or a random sample shaped
    like ``sample_input``."""
    from .evaluation import as_tensors

    x = y = None
    if data is not None:
        x, y = as_tensors(data)
        x = model_input(x.detach(), current())
    if sample_input is None and x is None:
        raise ExportError("expected data or a sample_input to fix the model's input shape, got neither")
    sample = _example(sample_input if sample_input is not None else x[:2])
    label = f"evaluation data ({len(x)} inputs)" if x is not None else f"random sample ({RANDOM_SAMPLES} inputs)"
    if x is None:
        x = torch.randn((RANDOM_SAMPLES, *sample.shape[1:]), generator=torch.Generator().manual_seed(0))
    return x, y, sample, label


def _exporter(model: nn.Module, fname: str, bits: int | None, per_channel: bool):
    """(exporter name, the torch model the file is held to, its label)."""
    if bits is None:
        return ("dynamo" if isinstance(model, torch.fx.GraphModule) else "torchscript"), model, "torch model"
    from .quant import quantize_model

    ref = quantize_model(model, bits, per_channel=per_channel).eval()
    return "brevitas-qcdq", ref, f"brevitas model ({fname} {'per-channel' if per_channel else 'per-tensor'} weights)"


def _run_exporter(exporter: str, model, reference, sample, raw: Path, opset: int, fname: str):
    """The ModelProto from the chosen exporter (its own console output swallowed); one line if it fails."""
    try:
        with _quiet_fds():
            if exporter == "torchscript":
                return _export_torchscript(model, sample, raw, opset)
            if exporter == "torchscript-dq":  # the weights are stored in their format afterwards
                from .blockexport import TORCHSCRIPT_MAX_OPSET

                return _export_torchscript(reference, sample, raw, min(opset, TORCHSCRIPT_MAX_OPSET))
            if exporter == "dynamo":
                return _export_dynamo(model, sample, opset)
            return _export_qcdq(reference, sample, raw, opset)
    except HwfaultError:
        raise
    except Exception as e:  # exporters raise many types (torch.onnx errors, brevitas, onnx)
        raise ExportError(f"{fname} export of {type(model).__name__} failed ({exporter}, opset {opset}): "
                          f"{type(e).__name__}: {_first_line(e)}") from None


def _parity(proto, x, y, model, reference, bits: int | None, fname: str) -> dict:
    """The file (as bytes) in onnxruntime against the torch reference, and the criteria it fails."""
    from .evaluation import accuracy_of, logits

    try:
        got = _run_ort(ort_session(proto, threads=1), x)
    except Exception as e:  # onnxruntime's own exception types
        raise ExportError(f"exported {fname} file does not run in onnxruntime: {_first_line(e)}") from None
    with torch.no_grad():
        want = logits(reference, (x, None))
        flt = logits(model, (x, None)) if reference is not model else None
    delta, agree = _max_delta(got, want), _agreement(got, want)
    acc_onnx, acc_ref = accuracy_of(got, y), accuracy_of(want, y)
    acc_diff = None if acc_onnx is None else acc_onnx - acc_ref
    failures = []
    if bits is None:
        if not delta <= FP32_MAX_DELTA:
            failures.append(f"max |delta logit| {delta:.3g} > {FP32_MAX_DELTA:g}")
        if agree < 1.0:
            failures.append(f"top-1 agreement {100 * agree:.2f}% < 100%")
    else:
        if agree < INT_MIN_AGREEMENT:
            failures.append(f"top-1 agreement {100 * agree:.2f}% < {100 * INT_MIN_AGREEMENT:g}%")
        if acc_diff is not None and abs(acc_diff) > INT_MAX_ACCURACY_DIFF + 1e-12:
            failures.append(f"accuracy differs by {100 * acc_diff:+.2f} points (limit {100 * INT_MAX_ACCURACY_DIFF:g})")
    if failures and reference is not model:  # is it onnxruntime's fused integer kernels? say so
        with contextlib.suppress(Exception):
            plain = _run_ort(ort_session(proto, threads=1, fuse=False), x)
            plain_agree = _agreement(plain, want)
            plain_ok = plain_agree >= INT_MIN_AGREEMENT if bits is not None else \
                plain_agree == 1.0 and _max_delta(plain, want) <= FP32_MAX_DELTA
            if plain_ok:
                failures.append(f"onnxruntime's QDQ fusions cause it: without them the file matches the reference "
                                f"to {_max_delta(plain, want):.2g} ({100 * plain_agree:.2f}% agreement)")
    acc_float = accuracy_of(flt, y) if flt is not None else None
    return {"max_abs_delta": delta, "agreement": agree, "reference_accuracy": acc_ref, "onnx_accuracy": acc_onnx,
            "accuracy_diff": acc_diff, "float_accuracy": acc_float,
            "float_agreement": _agreement(got, flt) if flt is not None else None,
            "float_accuracy_diff": (acc_onnx - acc_float) if flt is not None and acc_onnx is not None else None,
            "failures": tuple(failures)}


@analysis
def export_onnx(model: nn.Module, out_path: str | Path, *, data=None, fmt: str = "fp32", opset: int | None = None,
                chip=None, metadata: dict | None = None, sample_input: torch.Tensor | None = None,
                per_channel: bool | None = None) -> ExportReport:
    """Export ``model`` to ``out_path`` as ``fmt`` (``"fp32"``, ``"int8"``, ``"intN"`` or a block format:
    ``"fp8_e4m3"``, ``"int4-g128"``, ... see the module docstring) and check the file.

    ``data`` (a TensorDataset or ``(x, y)``) is the evaluation data of the parity check; without it a
    random sample shaped like ``sample_input`` is used (one of the two is required: it fixes the input
    shape). ``chip`` (a ChipSpec, preset name or TOML path) is stored in the file; for an int export
    an ``intN`` chip sets the bit width and its scale granularity (``per_channel`` overrides it).
    ``metadata`` entries are stored as ``hwfault_<key>``. Returns the :class:`ExportReport`; raises
    :class:`~hwfault.errors.ExportError` (and writes nothing) when the export or ``onnx.checker`` fails.
    """
    import onnx

    from . import __version__
    from .evaluation import check_targets, logits

    t0 = time.perf_counter()
    if not differentiable(model):  # an OnnxModule: already a file, run by onnxruntime
        raise ExportError(f"{type(model).__name__} is already an ONNX model; export needs the torch model")
    if device_of(model).type != "cpu":  # the file is traced, and its parity checked, on the CPU
        model = copy.deepcopy(model).cpu()
    spec = _resolve_chip(chip)
    block, fname, bits = _formats(fmt, spec)
    if block is not None and per_channel:
        raise ExportError(f"per_channel applies to intN exports; {fname} has scales of its own")
    if per_channel is None:
        per_channel = bool(spec is not None and bits is not None and spec.format.kind.startswith("int")
                           and spec.format.scale == "per-channel")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ExportError(f"{out_path}: is a directory; expected an .onnx file path")
    check_output(out_path, what="--out")
    x, y, sample, label = _check_inputs(data, sample_input)
    with _traceable(model):
        with torch.no_grad():
            logits(model, (sample, None))  # a model that cannot run on this input shape fails here, in its own words
            if y is not None:
                check_targets(logits(model, (x[:1], None)), y)  # labels beyond the model's outputs: not its data
        if block is not None:
            from . import blockexport as bx

            reference, layers = bx.quantized_copy(model, block)
            exporter, ref_label, opset = "torchscript-dq", f"torch model at its {fname} weights", \
                bx.check_opset(bx.OPSET[block.kind] if opset is None else opset, block)
            reference.eval()
        else:
            exporter, reference, ref_label = _exporter(model, fname, bits, per_channel)
        if opset is None:
            opset = DEFAULT_OPSET[exporter]
            if exporter == "brevitas-qcdq" and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
                opset = 14  # attention traces to scaled_dot_product_attention: ONNX ops from opset 14
        if block is None:
            opset = _check_opset(opset, exporter)
        with _scratch(out_path) as tmp:
            proto = _run_exporter(exporter, model, reference, sample, Path(tmp) / "export.onnx", opset, fname)
        if block is not None:  # the weight initializers replaced by the format's codes and DequantizeLinear
            proto = bx.set_opset(proto, opset)
            expected = bx.store_weights(proto, reference, layers, block)
        input_shape = tuple(d.dim_param or d.dim_value or "?" for d in proto.graph.input[0].type.tensor_type.shape.dim)
        base = {"version": __version__, "format": fname, "exporter": exporter, "input_shape": list(input_shape)}
        if bits is not None:
            base["scale"] = "per-channel" if per_channel else "per-tensor"
        if block is not None:
            base["scale"] = "per-tensor" if block.group == 0 else "per-group" if block.kind == "int" else "per-block"
            base["storage"], base["layers"] = bx.storage_text(block, opset), list(layers)
        if spec is not None:
            base["chip"], base["chip_name"] = spec.to_toml(), spec.name
        entries = {**(metadata or {}), **base}  # the caller's entries cannot mask what the file is
        _set_props(proto, _meta_props(entries))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as e:  # onnx.checker.ValidationError, shape-inference errors
            raise ExportError(f"exported {fname} file fails onnx.checker: {_first_line(e)}") from None
        if block is not None:
            bx.check_weights(proto, expected, block)
        par = _parity(proto, x, y, model, reference, bits, fname)
        _set_props(proto, _meta_props({**entries, "parity": {
            "reference": ref_label, "data": label, "max_abs_delta": par["max_abs_delta"], "agreement": par["agreement"],
            "reference_accuracy": par["reference_accuracy"], "onnx_accuracy": par["onnx_accuracy"],
            "passed": not par["failures"]}}))
        atomic_write(out_path, lambda t: onnx.save_model(proto, str(t), save_as_external_data=False), what="--out")
    return ExportReport(
        path=str(out_path), format=fname, scale=base.get("scale"),
        exporter=exporter, opset=opset, input_shape=input_shape, reference=ref_label, data=label, n=len(x),
        initializers=_initializer_types(proto), size_bytes=out_path.stat().st_size, seconds=time.perf_counter() - t0,
        metadata=metadata_of(proto), passed=not par["failures"], **par)


def robustness_summary(model: nn.Module, data, chip, *, trials: int = 50, device=None) -> dict:
    """The headline figures of ``hwfault estimate`` for ``model`` on ``chip`` over ``trials`` Monte-Carlo
    chips (clean, stored, Monte-Carlo mean and 1st percentile, one-step and multi-step worst cases):
    what an exported file carries about the chip it is meant for."""
    from .analyses.estimate import estimate
    from .analyses.harden import summary

    r = estimate(model, data, chip, trials=trials, per_fault=False, severities=(), device=device)
    return {"chip": r.chip["name"], "trials": trials, **summary(r.to_dict())}


@analysis
def export_model(model: str, data: str, out: str | Path, *, fmt: str = "fp32", opset: int | None = None,
                 chip=None, trials: int = 50, device=None) -> ExportReport:
    """``hwfault export`` as one call: load ``model`` (a zoo name, checkpoint or ``.pt2``; an ONNX file is
    refused), summarise its robustness on ``chip`` (if given) and write the self-checked ONNX file with
    that summary and the chip in its metadata (see :func:`export_onnx`). ``device``: where the robustness
    summary runs (:mod:`hwfault.devices`); the export and its parity check run on the CPU."""
    from .data import load_data
    from .inputs import resolve_model

    _formats(fmt, _resolve_chip(chip))  # a format that cannot be exported fails before any work
    module, model = resolve_model(model)
    if not differentiable(module):
        raise HwfaultError(f"{model}: already an ONNX file; export takes a torch model")
    test = load_data(data, "test")
    meta = {"source_model": model, "data": str(data)}
    if chip:
        meta["robustness"] = robustness_summary(module, test, chip, trials=trials, device=device)
    return export_onnx(module, out, data=test, fmt=fmt, opset=opset, chip=chip, metadata=meta)
