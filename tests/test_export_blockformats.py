"""ONNX export in the block formats: float8 / int4 / int8 / E8M0 initializers that are hwfault's codes byte
for byte, dequantized by onnxruntime to ``fmt.quantize(w)`` bit for bit, parity against the torch model
at those weights, and the formats onnxruntime cannot run refused before anything is written."""

import copy
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import hwfault as hw
import hwfault.blockexport as bx
from hwfault.blockformats import encode, number_format, parse
from hwfault.cli import main
from hwfault.errors import ExportError
from hwfault.export import FP32_MAX_DELTA, export_onnx, ort_session, read_metadata

ZOO = {"digits-mlp": "digits", "digits-cnn": "digits", "mnist1d-transformer": "mnist1d"}
LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
EXPORTED = ["fp8_e4m3", "fp8_e5m2", "int4-g32", "int4-g128", "int8-g128", "mxfp8_e4m3", "mxint8"]


@pytest.fixture(scope="module")
def models():
    return {name: hw.load_model(name) for name in ZOO}


@pytest.fixture(scope="module")
def datasets():
    return {d: hw.load_data(d, "test") for d in set(ZOO.values())}


def _block(fmt: str):
    """hwfault's BlockFormat of an export format name."""
    if fmt.startswith("int"):
        bits, group = fmt[3:].split("-g")
        return parse(f"int{bits}", int(group))
    return parse(fmt)


def _stored_format(fmt: str):
    if fmt.startswith("int"):
        bits, group = fmt[3:].split("-g")
        return number_format(f"int{bits}", group=int(group))
    return number_format(fmt)


def _layers(model):
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, LAYERS)}


# ----------------------------------------------------------------------------- reading the file back


def _chains(proto) -> list[dict]:
    """Every DequantizeLinear of a weight: its codes and scale initializers (through the Cast), the ops after
    it and the name of the tensor the model reads."""
    inits = {t.name: t for t in proto.graph.initializer}
    prod = {o: n for n in proto.graph.node for o in n.output}
    users = {}
    for n in proto.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    out = []
    for n in proto.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        scale = n.input[1]
        scale = inits[scale] if scale in inits else inits[prod[scale].input[0]]
        ops, cur = [], n.output[0]
        while len(users.get(cur, [])) == 1 and users[cur][0].op_type in ("Mul", "Reshape", "Transpose"):
            ops.append(users[cur][0].op_type)
            cur = users[cur][0].output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        out.append({"codes": inits[n.input[0]], "scale": scale, "ops": ops, "out": cur, "attrs": attrs,
                    "scale_is_cast": n.input[1] not in inits})
    return out


def _weights(proto, names) -> list[np.ndarray]:
    """The float32 weights the file computes (its own graph, the weights added as outputs), in onnxruntime."""
    p = copy.deepcopy(proto)
    for name in names:
        p.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    s = ort_session(p)
    inp = s.get_inputs()[0]
    x = np.zeros([d if isinstance(d, int) else 1 for d in inp.shape],
                 np.int64 if inp.type == "tensor(int64)" else np.float32)
    return s.run(list(names), {inp.name: x})


def _signed(c: np.ndarray, bits: int) -> np.ndarray:
    c = c.astype(np.int64) & ((1 << bits) - 1)
    return np.where(c >= 1 << (bits - 1), c - (1 << bits), c)


def _code_bytes(fmt, codes: np.ndarray, container: str) -> bytes:
    """The bytes ONNX stores for hwfault's codes, written here independently of hwfault.blockexport."""
    if container == "INT4":  # two per byte, the first element in the low nibble
        v = (_signed(codes, fmt.bits) & 0xF).reshape(-1)
        v = np.append(v, 0) if v.size % 2 else v
        return bytes((v[0::2] | (v[1::2] << 4)).astype(np.uint8))
    if container == "INT16":
        return (_signed(codes, fmt.bits) & 0xFFFF).astype("<u2").tobytes()
    return (_signed(codes, fmt.bits) & 0xFF).astype(np.uint8).tobytes() if fmt.kind == "int" else \
        codes.astype(np.uint8).tobytes()


def _assert_exact(proto, model, fmt_name: str) -> None:
    """Each Linear/Conv weight of ``model`` is stored as hwfault's codes and scales (bytes), in hwfault's layout,
    and onnxruntime dequantizes it to ``fmt.quantize(w)`` bit for bit."""
    fmt, stored = _block(fmt_name), _stored_format(fmt_name)
    container = {"fp8_e4m3": "FLOAT8E4M3FN", "fp8_e5m2": "FLOAT8E5M2", "mxfp8_e4m3": "FLOAT8E4M3FN",
                 "mxfp8_e5m2": "FLOAT8E5M2", "mxint8": "INT8"}.get(fmt.kind) or \
        ("INT4" if fmt.bits <= 4 else "INT8" if fmt.bits <= 8 else "INT16")
    chains = _chains(proto)
    layers = _layers(model)
    assert len(chains) == len(layers)
    got = dict(zip([c["out"] for c in chains], _weights(proto, [c["out"] for c in chains]), strict=True))
    for name, w in layers.items():
        b = encode(w, fmt)
        codes = b.elements[:, :b.k].numpy()
        want = _code_bytes(fmt, codes, container)
        found = [c for c in chains if c["codes"].raw_data == want]  # the codes, byte for byte
        assert len(found) == 1, f"{name}: no initializer holds hwfault's {fmt_name} codes"
        c = found[0]
        t = c["codes"]
        assert t.data_type == getattr(onnx.TensorProto, container), name
        if fmt.group == 0:  # FP8: the weight's shape, one fp32 scale
            assert tuple(t.dims) == tuple(w.shape) and tuple(c["scale"].dims) == ()
            assert c["scale"].data_type == onnx.TensorProto.FLOAT and not c["scale_is_cast"]
            assert c["scale"].raw_data == b.scales.numpy().astype("<u4").tobytes()
            # onnx reads the bytes as the same element values hwfault decodes
            vals = numpy_helper.to_array(t).astype(np.float64)
            np.testing.assert_array_equal(vals.reshape(-1), fmt.element.decode(b.elements).numpy().reshape(-1))
        else:  # blocks of `group` along K of (out, K): axis 1, one scale per block
            k = b.k
            assert tuple(t.dims) == (w.shape[0], k) and c["attrs"] == {"axis": 1, "block_size": fmt.group}
            assert tuple(c["scale"].dims) == (w.shape[0], -(-k // fmt.group)) and c["scale_is_cast"]
            stype, width = ("FLOAT16", "<u2") if fmt.kind == "int" else ("FLOAT8E8M0", "u1")
            assert c["scale"].data_type == getattr(onnx.TensorProto, stype)
            assert c["scale"].raw_data == b.scales.numpy().astype(width).tobytes()
            if container in ("INT4", "INT8", "INT16"):
                bits = fmt.bits if fmt.kind == "int" else 8
                np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.int64), _signed(codes, bits))
            assert ("Reshape" in c["ops"]) == (w.ndim != 2) and ("Mul" in c["ops"]) == (fmt.kind == "mxint8")
        q = stored.quantize(w).numpy()
        have = got[c["out"]]
        if "Transpose" in c["ops"]:  # the exporter wanted the (K, out) transpose
            have = have.T
        assert have.shape == q.shape and np.array_equal(np.ascontiguousarray(have).view(np.uint32),
                                                        q.view(np.uint32)), name


def _reference(model, fmt_name):
    ref = copy.deepcopy(model).eval()
    stored = _stored_format(fmt_name)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, LAYERS):
                m.weight.copy_(stored.quantize(m.weight))
    return ref


# ----------------------------------------------------------------------------- exact files, parity


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("fmt", EXPORTED)
def test_block_export_stores_hwfault_codes_and_matches_torch(models, datasets, tmp_path, name, fmt):
    model, data = models[name], datasets[ZOO[name]]
    out = tmp_path / "m.onnx"
    r = export_onnx(model, out, data=data, fmt=fmt)
    onnx.checker.check_model(str(out), full_check=True)
    assert r.passed and not r.failures, r.failures
    assert r.format == fmt and r.exporter == "torchscript-dq" and r.opset == bx.OPSET[_block(fmt).kind]
    assert r.max_abs_delta <= FP32_MAX_DELTA and r.agreement == 1.0 and r.n == len(data)
    ref = _reference(model, fmt)
    assert r.reference_accuracy == r.onnx_accuracy == hw.evaluate(ref, data).accuracy
    assert r.float_accuracy == hw.evaluate(model, data).accuracy and r.float_agreement is not None
    proto = onnx.load(str(out))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {r.opset}
    _assert_exact(proto, model, fmt)
    meta = read_metadata(out)
    assert meta["format"] == fmt and meta["layers"] == list(_layers(model)) and meta["parity"]["passed"]
    assert meta["scale"] == ("per-tensor" if fmt.startswith("fp8") else "per-group" if fmt.startswith("int") else
                             "per-block")


def test_int4_groups_are_smaller_than_int8_and_fp32(models, datasets, tmp_path):
    sizes = {f: export_onnx(models["digits-mlp"], tmp_path / f"{f}.onnx", data=datasets["digits"], fmt=f).size_bytes
             for f in ("fp32", "int8-g128", "int4-g128")}
    assert sizes["int4-g128"] < 0.65 * sizes["int8-g128"] < 0.65 * sizes["fp32"], sizes


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int4-g32", "int3-g16", "int12-g64", "mxint8"])
def test_transposed_matmul_weights_of_a_transformer(models, datasets, tmp_path, fmt):
    """Linear layers on 3-D input export as MatMul of the (K, out) transpose: the file keeps hwfault's (out, K)
    codes and transposes after dequantizing (no fused blocked-DQ MatMul kernel: parity is exact)."""
    model, data = models["mnist1d-transformer"], datasets["mnist1d"]
    r = export_onnx(model, tmp_path / "t.onnx", data=data, fmt=fmt)
    assert r.passed and r.max_abs_delta <= FP32_MAX_DELTA, r.failures
    proto = onnx.load(str(tmp_path / "t.onnx"))
    assert any("Transpose" in c["ops"] for c in _chains(proto))
    _assert_exact(proto, model, fmt)


def test_opset_above_the_lowest_and_containers(models, datasets, tmp_path):
    model, data = models["digits-cnn"], datasets["digits"]
    r = export_onnx(model, tmp_path / "a.onnx", data=data, fmt="fp8_e4m3", opset=21)
    assert r.opset == 21 and r.passed
    r = export_onnx(model, tmp_path / "b.onnx", data=data, fmt="int6-g32")  # int6 codes in INT8 containers
    assert r.passed and "INT8 (holding int6 codes)" in read_metadata(tmp_path / "b.onnx")["storage"]
    _assert_exact(onnx.load(str(tmp_path / "b.onnx")), model, "int6-g32")


# ----------------------------------------------------------------------------- the checks can fail


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int4-g32", "mxfp8_e4m3"])
def test_a_wrong_scale_or_code_fails_the_exactness_check(models, datasets, tmp_path, fmt):
    model = models["digits-cnn"]
    export_onnx(model, tmp_path / "m.onnx", data=datasets["digits"], fmt=fmt)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    _assert_exact(proto, model, fmt)
    for what in ("scale", "codes"):
        bad = copy.deepcopy(proto)
        t = _chains(bad)[1][what]
        raw = bytearray(t.raw_data)
        raw[0] ^= 1  # one ulp of a scale (a factor 2 for E8M0), or the last bit of the first code
        t.raw_data = bytes(raw)
        with pytest.raises(AssertionError):
            _assert_exact(bad, model, fmt)


def test_export_refuses_a_file_whose_weights_are_not_hwfaults(models, datasets, tmp_path, monkeypatch):
    """A store that gets a scale wrong by one ulp is caught by the export's own onnxruntime check."""
    real = bx.encode

    def off_by_one(w, fmt):
        b = real(w, fmt)
        return b.with_scales(b.scales ^ 1)

    monkeypatch.setattr(bx, "encode", off_by_one)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"int4-g32 weights of '.*' in onnxruntime differ from hwfault's"):
        export_onnx(models["digits-cnn"], out, data=datasets["digits"], fmt="int4-g32")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- the command line, refusals


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("fmt", sorted(bx.REFUSED))
def test_cli_refuses_formats_onnxruntime_cannot_run(capsys, tmp_path, fmt):
    out = tmp_path / "m.onnx"
    code, _, err = run(capsys, "export", "-m", "digits-cnn", "--format", fmt, "--out", out)
    line = _one_error_line(err)
    assert code == 2 and f"cannot export {fmt}:" in line and "onnxruntime" in line
    assert not out.exists() and os.listdir(tmp_path) == []


def test_refusal_comes_before_the_robustness_summary(capsys, tmp_path, monkeypatch):
    import hwfault.export as ex

    def never(*a, **k):
        raise AssertionError("the robustness summary ran before the format was checked")

    monkeypatch.setattr(ex, "robustness_summary", never)
    out = tmp_path / "m.onnx"
    for args in (["--format", "mxfp4", "--chip", "mxfp4-sram-0.55v"],
                 ["--format", "int4-g32", "--chip", "int4-g128-soft-errors"]):
        code, _, err = run(capsys, "export", "-m", "digits-cnn", *args, "--out", out)
        assert code == 2 and ("cannot export mxfp4" in err or "conflicts with chip" in err), err
        _one_error_line(err)
    assert os.listdir(tmp_path) == []


def test_cli_exports_group_int_by_name_and_from_the_chip(capsys, tmp_path):
    code, _, err = run(capsys, "export", "-m", "digits-cnn", "--format", "int4-g128", "--out", tmp_path / "a.onnx")
    assert code == 0, err
    meta = read_metadata(tmp_path / "a.onnx")
    assert meta["format"] == "int4-g128" and meta["scale"] == "per-group" and meta["storage"].startswith("INT4")
    # an int export on a per-group chip takes the chip's bits and group (int8 means "the chip's intN")
    code, _, err = run(capsys, "export", "-m", "digits-cnn", "--chip", "int4-g128-soft-errors", "--format", "int8",
                       "--trials", 2, "--out", tmp_path / "b.onnx")
    assert code == 0, err
    meta = read_metadata(tmp_path / "b.onnx")
    assert meta["format"] == "int4-g128" and meta["chip_name"] == "int4-g128-soft-errors" and "robustness" in meta
    a, b = (onnx.load(str(tmp_path / f)) for f in ("a.onnx", "b.onnx"))
    assert [t.raw_data for t in a.graph.initializer] == [t.raw_data for t in b.graph.initializer]


@pytest.mark.parametrize("kwargs, match", [
    ({"fmt": "fp8e4m3"}, r"expected an export format .*did you mean 'fp8_e4m3'"),
    ({"fmt": "int4-g0"}, "group_size >= 1"),
    ({"fmt": "int17-g32"}, "2 to 16 bits"),
    ({"fmt": "fp8_e5m2", "opset": 18}, r"--opset in 19\.\."),
    ({"fmt": "mxint8", "opset": 21}, r"--opset in 24\.\."),
    ({"fmt": "int4-g32", "per_channel": True}, "per_channel applies to intN"),
    ({"fmt": "fp8_e4m3", "chip": "mxfp4-sram-0.55v"}, "conflicts with chip 'mxfp4-sram-0.55v' format mxfp4"),
])
def test_block_export_input_errors_are_one_line(models, datasets, tmp_path, kwargs, match):
    with pytest.raises(ExportError, match=match) as e:
        export_onnx(models["digits-mlp"], tmp_path / "m.onnx", data=datasets["digits"], **kwargs)
    assert "\n" not in str(e.value) and os.listdir(tmp_path) == []
