"""Weight quantisation (brevitas, hwfault's intN rule) and ONNX export with its own parity check."""

import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import hwfault as hw
from hwfault import zoo
from hwfault.errors import ExportError, ModelError
from hwfault.evaluation import logits
from hwfault.export import FP32_MAX_DELTA, INT_MAX_ACCURACY_DIFF, INT_MIN_AGREEMENT, export_onnx, read_metadata
from hwfault.formats import NumberFormat
from hwfault.quant import dequantized_state_dict, quantize_model, quantized_layers, to_float
from hwfault.spec import load_chip, parse_chip

ZOO = {"digits-mlp": "digits", "digits-cnn": "digits", "mnist1d-resnet": "mnist1d"}


@pytest.fixture(scope="module")
def models():
    return {name: hw.load_model(name) for name in ZOO}


@pytest.fixture(scope="module")
def datasets():
    return {d: hw.load_data(d, "test") for d in set(ZOO.values())}


# ----------------------------------------------------------------------------- quantisation


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_brevitas_weights_are_hwfault_intN(models, name, bits, per_channel):
    model = models[name]
    q = quantize_model(model, bits, per_channel=per_channel)
    layers = quantized_layers(q)
    convs_and_linears = [n for n, m in model.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv1d,
                                                                          torch.nn.Conv2d)]
    assert sorted(layers) == sorted(convs_and_linears)
    fmt = NumberFormat.parse(f"int{bits}", per_channel=per_channel)
    for layer in layers.values():
        qt = layer.quant_weight()
        want = fmt.quantize(layer.weight)
        torch.testing.assert_close(qt.value.detach(), want, rtol=0, atol=1e-6 * float(want.abs().max()))
        torch.testing.assert_close(qt.scale.detach().reshape(-1), fmt.scale(layer.weight).reshape(-1))
        codes = qt.int().detach()
        assert int(codes.abs().max()) == fmt.qmax  # narrow range, max scaling: the largest weight is +-qmax
    # same parameter names; the original model is untouched
    assert [n for n, _ in q.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(type(m) is not type(layers[n]) for n, m in model.named_modules() if n in layers)


@pytest.mark.parametrize("name", list(ZOO))
def test_quantised_state_dicts_load_into_the_float_model(models, datasets, name):
    model = models[name]
    q = quantize_model(model, 8).eval()
    x = datasets[ZOO[name]].tensors[0][:64]
    latent = to_float(q, dequantize=False)
    assert type(latent) is type(model)
    for (n, a), b in zip(latent.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    fresh = zoo.get_entry(name).build
    f = to_float(q, fresh)  # the factory path: strict load of the dequantised state dict
    f.eval()
    with torch.no_grad():
        torch.testing.assert_close(f(x), q(x), rtol=0, atol=1e-5)
    assert set(dequantized_state_dict(q)) == set(model.state_dict())


def test_qat_gradients_flow_straight_through(models, datasets):
    model = models["digits-cnn"]
    x, y = datasets["digits"].tensors
    x, y = x[:128], y[:128]
    q = quantize_model(model, 4).train()
    for p in q.parameters():
        p.requires_grad_(True)
    f = to_float(q).train()  # the float model at the quantised weights
    for p in f.parameters():
        p.requires_grad_(True)
    torch.nn.functional.cross_entropy(q(x), y).backward()
    torch.nn.functional.cross_entropy(f(x), y).backward()
    for (n, pq), pf in zip(q.named_parameters(), f.parameters(), strict=True):
        assert pq.grad is not None and torch.isfinite(pq.grad).all(), n
        if n.endswith("weight") and n.split(".")[0] in quantized_layers(q):
            # STE: the rounding passes the gradient through; only the scale's own path (through
            # max|w|) adds a little on the largest weights
            cos = torch.nn.functional.cosine_similarity(pq.grad.reshape(-1), pf.grad.reshape(-1), dim=0)
            assert cos > 0.99, (n, float(cos))
    # a QAT step moves the latent weights and the scale follows them
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    before = q.conv2.quant_weight().scale.detach().clone()
    opt.step()
    w = q.conv2.weight.detach()
    assert not torch.equal(q.conv2.quant_weight().scale.detach(), before)
    torch.testing.assert_close(q.conv2.quant_weight().scale.detach(), w.abs().max() / 7)


def test_quantize_model_rejects_bad_input(models):
    with pytest.raises(ModelError, match="bit width"):
        quantize_model(models["digits-mlp"], 1)
    with pytest.raises(ModelError, match="nothing to quantise"):
        quantize_model(torch.nn.Sequential(torch.nn.ReLU()), 8)


# ----------------------------------------------------------------------------- fp32 export


@pytest.mark.parametrize("name", ["digits-cnn", "mnist1d-resnet"])
def test_fp32_export_matches_torch(models, datasets, tmp_path, name):
    model, data = models[name], datasets[ZOO[name]]
    out = tmp_path / f"{name}.onnx"
    r = export_onnx(model, out, data=data, metadata={"source_model": name})
    onnx.checker.check_model(str(out), full_check=True)
    assert r.passed and not r.failures
    assert r.max_abs_delta <= FP32_MAX_DELTA and r.agreement == 1.0 and r.n == len(data)
    assert r.onnx_accuracy == r.reference_accuracy == hw.evaluate(model, data).accuracy
    assert r.exporter == "torchscript" and r.opset == 17 and r.input_shape[0] == "batch"
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["logits"]
    # the initializers are the model's parameters and buffers one to one (BatchNorm not folded, nothing tied)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(inits) == set(state)
    assert all(np.array_equal(inits[k], v.numpy()) for k, v in state.items())
    assert r.to_dict()["passed"] is True and json.dumps(r.to_dict())


def test_fp32_export_has_a_dynamic_batch(models, datasets, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(models["digits-mlp"], out, data=datasets["digits"])
    from hwfault.export import ort_session

    s = ort_session(out)
    for n in (1, 3, 700):
        assert s.run(None, {"x": np.zeros((n, 1, 8, 8), np.float32)})[0].shape == (n, 10)


# ----------------------------------------------------------------------------- int export


@pytest.fixture(scope="module")
def int8_cnn(models, datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "cnn-int8.onnx"
    return out, export_onnx(models["digits-cnn"], out, data=datasets["digits"], fmt="int8")


def _code_initializers(proto) -> dict[str, np.ndarray]:
    """Integer initializers reaching a DequantizeLinear (through a Clip), by consumer node name."""
    inits = {t.name: t for t in proto.graph.initializer}
    prod = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear":
            src = n.input[0]
            if src not in inits and prod[src].op_type == "Clip":
                src = prod[src].input[0]
            out[n.name] = numpy_helper.to_array(inits[src])
    return out


def test_int8_export_matches_brevitas(models, datasets, int8_cnn):
    out, r = int8_cnn
    onnx.checker.check_model(str(out), full_check=True)
    assert r.passed, r.failures
    assert r.format == "int8" and r.scale == "per-tensor" and r.exporter == "brevitas-qcdq" and r.opset == 13
    assert r.agreement >= INT_MIN_AGREEMENT and abs(r.accuracy_diff) <= INT_MAX_ACCURACY_DIFF
    q = quantize_model(models["digits-cnn"], 8).eval()
    assert r.reference_accuracy == hw.evaluate(q, datasets["digits"]).accuracy
    assert r.float_accuracy == hw.evaluate(models["digits-cnn"], datasets["digits"]).accuracy
    assert r.float_agreement is not None and r.float_accuracy_diff is not None
    # the weights are stored as int8 codes: brevitas's codes of each layer, feeding DequantizeLinear
    codes = _code_initializers(onnx.load(str(out)))
    assert len(codes) == 4 and all(c.dtype == np.int8 for c in codes.values())
    for name, layer in quantized_layers(q).items():
        (stored,) = [c for k, c in codes.items() if k.startswith(f"/{name}/")]
        assert np.array_equal(stored, layer.quant_weight().int().detach().numpy())
    assert r.initializers["int8"] >= 4
    assert r.size_bytes < os.path.getsize(out) + 1 and r.size_bytes < 60_000  # a quarter of the fp32 file


def test_int4_chip_exports_int4_codes(models, datasets, tmp_path):
    spec = load_chip("rram-4bit")
    assert spec.format.kind == "int4"
    out = tmp_path / "cnn-int4.onnx"
    r = export_onnx(models["digits-cnn"], out, data=datasets["digits"], fmt="int8", chip=spec)
    assert r.format == "int4" and r.scale == spec.format.scale and r.passed, r.failures
    proto = onnx.load(str(out))
    assert "Clip" in {n.op_type for n in proto.graph.node}
    assert all(np.abs(c.astype(int)).max() == 7 for c in _code_initializers(proto).values())
    with pytest.raises(ExportError, match="conflicts"):
        export_onnx(models["digits-cnn"], tmp_path / "x.onnx", data=datasets["digits"], fmt="int6", chip=spec)


# ----------------------------------------------------------------------------- metadata, atomicity, inputs


def test_metadata_round_trip(models, datasets, tmp_path):
    spec = load_chip("int8-sram-0.5v")
    robustness = {"clean": 0.99, "monte_carlo": {"mean": 0.95, "ci95": [0.94, 0.97]}, "worst_case": 0.5}
    out = tmp_path / "m.onnx"
    r = export_onnx(models["digits-cnn"], out, data=datasets["digits"], fmt="int8", chip=spec,
                    metadata={"source_model": "digits-cnn", "robustness": robustness, "note": "123"})
    meta = read_metadata(out)
    assert meta["version"] == hw.__version__ and meta["format"] == "int8" and meta["scale"] == "per-channel"
    assert meta["source_model"] == "digits-cnn" and meta["note"] == "123"  # strings stay strings
    assert meta["robustness"] == robustness
    assert parse_chip(meta["chip"]) == spec and meta["chip_name"] == spec.name
    assert meta["input_shape"] == ["batch", 1, 8, 8]
    assert meta["parity"]["passed"] is True and meta["parity"]["agreement"] == r.agreement
    assert r.metadata == meta
    props = {p.key for p in onnx.load(str(out)).metadata_props}
    assert {"hwfault_version", "hwfault_format", "hwfault_chip", "hwfault_robustness", "hwfault_source_model",
            "hwfault_input_shape"} <= props


def test_failed_export_leaves_no_file(models, datasets, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="metadata 'bad'"):
        export_onnx(models["digits-mlp"], out, data=datasets["digits"], metadata={"bad": object()})
    assert os.listdir(tmp_path) == []
    out.write_text("previous file")  # a failed export leaves an existing file as it was
    with pytest.raises(ExportError):
        export_onnx(models["digits-mlp"], out, data=datasets["digits"], metadata={"bad": object()})
    assert os.listdir(tmp_path) == ["m.onnx"] and out.read_text() == "previous file"


def test_parity_failure_is_reported_and_the_file_written(models, datasets, tmp_path, monkeypatch):
    import hwfault.export as ex

    monkeypatch.setattr(ex, "FP32_MAX_DELTA", 0.0)  # no float export meets a zero tolerance
    out = tmp_path / "m.onnx"
    r = export_onnx(models["digits-mlp"], out, data=datasets["digits"])
    assert not r.passed and r.failures and "max |delta logit|" in r.failures[0]
    assert out.is_file() and read_metadata(out)["parity"]["passed"] is False


def test_export_without_data_uses_a_random_sample(models, tmp_path):
    r = export_onnx(models["digits-cnn"], tmp_path / "m.onnx", sample_input=torch.zeros(1, 1, 8, 8))
    assert r.passed and r.data.startswith("random sample") and r.onnx_accuracy is None and r.n == 64


@pytest.mark.parametrize("kwargs, match", [
    ({"fmt": "int16"}, "expected an export format fp32 or int8"),
    ({"fmt": "bf16"}, "expected an export format"),
    ({"data": None}, "expected data or a sample_input"),
])
def test_export_input_errors_are_one_line(models, datasets, tmp_path, kwargs, match):
    args = {"data": datasets["digits"], **kwargs}
    with pytest.raises(ExportError, match=match) as e:
        export_onnx(models["digits-cnn"], tmp_path / "m.onnx", **args)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_export_of_wrong_shape_data_names_the_shapes(models, datasets, tmp_path):
    with pytest.raises(ModelError, match=r"shape \(1, 40\)"):
        export_onnx(models["digits-cnn"], tmp_path / "m.onnx", data=datasets["mnist1d"])
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_pt2_archive_exports_through_dynamo(models, datasets, tmp_path):
    model = models["digits-cnn"]
    ep = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    gm = hw.load_model(tmp_path / "m.pt2")
    r = export_onnx(gm, tmp_path / "m.onnx", data=datasets["digits"])
    assert r.exporter == "dynamo" and r.passed and r.max_abs_delta <= FP32_MAX_DELTA
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.pt2"]  # one file, no external data
    with torch.no_grad():
        ref = logits(model, datasets["digits"])
    from hwfault.onnxmodel import load_onnx

    torch.testing.assert_close(logits(load_onnx(tmp_path / "m.onnx"), datasets["digits"]), ref, rtol=0, atol=1e-4)
