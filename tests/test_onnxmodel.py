"""Faults on the deployed ONNX file: an OnnxModule runs in onnxruntime exactly what the torch model runs."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import hwfault as hw
from hwfault.errors import DataError, ModelError
from hwfault.evaluation import logits, loss_and_grad
from hwfault.export import export_onnx
from hwfault.faults import Chip
from hwfault.onnxmodel import OnnxModule, load_onnx
from hwfault.params import describe, perturbed
from hwfault.quant import quantize_model, to_float
from hwfault.spec import load_chip

ATOL = 1e-4


@pytest.fixture(scope="module")
def files(cnn, digits, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    export_onnx(cnn, d / "fp32.onnx", data=digits)
    export_onnx(cnn, d / "int8.onnx", data=digits, fmt="int8")  # per-tensor scales
    export_onnx(cnn, d / "int8pc.onnx", data=digits, fmt="int8", chip="int8-sram-0.5v")  # per-channel scales
    return d


@pytest.fixture(scope="module")
def fp32(files):
    return load_onnx(files / "fp32.onnx")


@pytest.fixture(scope="module")
def int8(files):
    return load_onnx(files / "int8.onnx")


@pytest.fixture(scope="module")
def int8pc(files):
    return load_onnx(files / "int8pc.onnx")


def _deltas(model, names, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.randn(params[n].shape, generator=gen) * scale for n in names}


def _apply(model, deltas):
    sel = hw.select(model, list(deltas))
    return perturbed(sel, [deltas[n] for n in sel.names])


# ----------------------------------------------------------------------------- structure and clean runs


def test_parameters_mirror_the_torch_model(cnn, fp32, int8):
    want = [(i.name, i.component) for i in describe(cnn)]
    for m in (fp32, int8):
        assert isinstance(m, torch.nn.Module) and m.differentiable is False and not m.training
        assert [(i.name, i.component) for i in describe(m)] == want
        assert all(not p.requires_grad for p in m.parameters())
        assert m.input_shape == (None, 1, 8, 8)
    for (n, p), q in zip(fp32.named_parameters(), cnn.parameters(), strict=True):
        assert torch.equal(p, q), n
    # chips select weights only by default: the conv and linear weights
    assert hw.select(int8, types="conv,linear").weights_only().names == (
        "conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")


def test_clean_accuracy_equals_torch(cnn, digits, fp32):
    torch.testing.assert_close(logits(fp32, digits), logits(cnn, digits), rtol=0, atol=ATOL)
    assert hw.evaluate(fp32, digits).accuracy == hw.evaluate(cnn, digits).accuracy


@pytest.mark.parametrize("fixture, per_channel", [("int8", False), ("int8pc", True)])
def test_clean_accuracy_equals_brevitas(request, cnn, digits, fixture, per_channel):
    m = request.getfixturevalue(fixture)
    q = quantize_model(cnn, 8, per_channel=per_channel).eval()
    torch.testing.assert_close(logits(m, digits), logits(q, digits), rtol=0, atol=ATOL)
    assert hw.evaluate(m, digits).accuracy == hw.evaluate(q, digits).accuracy
    # the exposed weights are the dequantised codes: brevitas's quantised weights
    for name, p in m.named_parameters():
        if name.endswith("weight") and name.split(".")[0] in ("conv1", "conv2", "fc1", "fc2"):
            layer = q.get_submodule(name.rsplit(".", 1)[0])
            torch.testing.assert_close(p, layer.quant_weight().value.detach(), rtol=0, atol=1e-7)


def test_reencoded_codes_equal_the_stored_initializers(int8, int8pc):
    for m in (int8, int8pc):
        quantized = [b for b in m.bindings if b.quantized]
        assert [b.name for b in quantized] == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
        for b in quantized:
            assert b.stored.dtype == np.int8 and b.bits == 8 and (b.lo, b.hi) == (-128, 127)
            assert np.array_equal(m.codes(b.name), m.stored_codes(b.name))
            info = b.describe()
            assert info["hwfault_grid"] and info["scale"] == ("per-channel" if m is int8pc else "per-tensor")


@pytest.mark.parametrize("fixture, chip_fmt", [("int8", "int8"), ("int8pc", "int8-per-channel")])
def test_hwfault_int8_format_finds_the_stored_codes(request, fixture, chip_fmt):
    from hwfault.formats import NumberFormat

    m = request.getfixturevalue(fixture)
    fmt = NumberFormat.parse("int8", per_channel=chip_fmt.endswith("per-channel"))
    for b in m.bindings:
        if b.quantized:
            codes = fmt.encode(b.param)  # unsigned two's complement patterns
            signed = torch.where(codes >= 128, codes - 256, codes).numpy().astype(np.int8)
            assert np.array_equal(signed, b.stored)


# ----------------------------------------------------------------------------- perturbations


def test_perturbation_acts_as_in_torch_fp32(cnn, digits, fp32):
    names = [n for n, _ in fp32.named_parameters()]
    deltas = _deltas(fp32, names)
    before = logits(fp32, digits)
    with _apply(cnn, deltas), _apply(fp32, deltas):
        got, want = logits(fp32, digits), logits(cnn, digits)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert (got - before).abs().max() > 0.1  # the perturbation mattered
    torch.testing.assert_close(logits(fp32, digits), before, rtol=0, atol=0)  # and was undone


def test_perturbation_on_the_integer_grid_acts_as_in_torch(cnn, digits, int8):
    # moving each weight by whole code steps: the file runs what a float model with those weights runs
    ref = to_float(quantize_model(cnn, 8)).eval()
    gen = torch.Generator().manual_seed(1)
    deltas = {}
    for b in int8.bindings:
        if b.quantized:
            steps = torch.randint(-3, 4, b.param.shape, generator=gen).float()
            deltas[b.name] = steps * float(b.scale)
    with _apply(ref, deltas), _apply(int8, deltas):
        torch.testing.assert_close(logits(int8, digits), logits(ref, digits), rtol=0, atol=ATOL)
        moved = int8.codes("conv2.weight").astype(int) - int8.stored_codes("conv2.weight").astype(int)
        assert np.array_equal(np.clip(moved, -3, 3), moved) and moved.any()


@pytest.mark.parametrize("preset, fixture", [("fp32-soft-errors", "fp32"), ("int8-sram-0.5v", "int8pc"),
                                             ("int8-sram-nominal", "int8pc")])
def test_chips_program_and_restore_bit_exactly(request, cnn, digits, snapshot, preset, fixture):
    m = request.getfixturevalue(fixture)
    take, same = snapshot
    spec = load_chip(preset)
    chip = Chip.build(spec, m)
    assert chip.selection.names == ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")
    # the reference: the torch model holding the same weights (the float model, or the dequantised brevitas one)
    ref = cnn if fixture == "fp32" else to_float(quantize_model(cnn, 8, per_channel=True)).eval()
    ref_chip = Chip.build(spec, ref)
    torch.testing.assert_close(chip.view.w, ref_chip.view.w, rtol=0, atol=0)
    snap = take(m)
    for seed in range(3):
        programmed = chip.program(torch.Generator().manual_seed(seed))
        ref_programmed = ref_chip.program(torch.Generator().manual_seed(seed))
        assert torch.equal(programmed, ref_programmed)
        with perturbed(chip.selection, chip.delta(programmed)), perturbed(ref_chip.selection,
                                                                          ref_chip.delta(programmed)):
            torch.testing.assert_close(logits(m, digits), logits(ref, digits), rtol=1e-4, atol=ATOL, equal_nan=True)
            if chip.quantized:  # the codes onnxruntime reads are the chip's stored bits
                stored = chip.view.encode(programmed.float())
                fed = np.concatenate([m.codes(n).reshape(-1) for n in chip.selection.names]).astype(np.int64)
                assert np.array_equal(fed & 0xFF, stored.numpy())
        assert same(m, snap)
    # and after an exception inside the block
    with pytest.raises(RuntimeError):
        with perturbed(chip.selection, chip.delta(chip.program(torch.Generator().manual_seed(9)))):
            raise RuntimeError("trial failed")
    assert same(m, snap)
    assert hw.evaluate(m, digits).accuracy == hw.evaluate(m, digits).accuracy


def test_a_flip_to_minus_128_reads_as_itself(int8):
    b = int8.binding("fc2.weight")
    i = int(np.argmax(b.stored.reshape(-1) == b.stored.max()))
    with torch.no_grad():
        old = b.param.view(-1)[i].clone()
        b.param.view(-1)[i] = -128 * float(b.scale)
        try:
            assert int(int8.codes("fc2.weight").reshape(-1)[i]) == -128
        finally:
            b.param.view(-1)[i] = old
    assert np.array_equal(int8.codes("fc2.weight"), b.stored)


def test_copies_run_independently(cnn, digits, fp32):
    """A deep copy has its own session and parameters: zeroing the copy's last weight makes its logits
    exactly the last bias (what a zero weight computes), while the original still gives the torch
    model's logits, bit for bit what it gave before."""
    before = logits(fp32, digits)
    clone = copy.deepcopy(fp32)
    with torch.no_grad():
        clone.fc2.weight.zero_()
    out = logits(clone, digits)
    torch.testing.assert_close(out, fp32.fc2.bias.detach().expand_as(out), rtol=0, atol=1e-6)
    assert torch.equal(logits(fp32, digits), before)
    torch.testing.assert_close(before, logits(cnn, digits), rtol=1e-4, atol=1e-4)


def test_no_gradients_through_onnxruntime(digits, fp32):
    sel = hw.select(fp32, types="conv,linear").weights_only()
    with pytest.raises(ModelError, match="Monte-Carlo only") as e:
        loss_and_grad(fp32, digits, list(sel.params))
    assert "\n" not in str(e.value)
    assert all(not p.requires_grad for p in fp32.parameters())
    from hwfault.analyses.campaign.incremental import try_cache

    assert try_cache(fp32, digits.tensors[0][:8]) is None  # not fx-traceable: campaigns run the full forward


# ----------------------------------------------------------------------------- bad inputs


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_text_file_is_not_an_onnx_model(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("this is not a model\n")
    with pytest.raises(ModelError, match="not an ONNX model") as e:
        load_onnx(p)
    assert str(p) in _one_line(e)
    with pytest.raises(ModelError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")


def _save(tmp_path, nodes, inits=(), name="m.onnx", inp=("x", [None, 4]), domain_opsets=()):
    x = helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    g = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domain_opsets]
    model = helper.make_model(g, opset_imports=opsets)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_a_model_without_weights_cannot_be_injected(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")])
    with pytest.raises(ModelError, match="nothing to inject: no Conv, Gemm or MatMul weight") as e:
        load_onnx(path)
    _one_line(e)


def test_unsupported_and_custom_ops_are_named(tmp_path):
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                            helper.make_node("Hardmax", ["h"], ["y"], name="hm")], [w])
    with pytest.raises(ModelError, match="unsupported ONNX op 'Hardmax'") as e:
        load_onnx(path)
    _one_line(e)
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                            helper.make_node("Magic", ["h"], ["y"], name="mg", domain="com.example")], [w],
                 name="c.onnx", domain_opsets=["com.example"])
    with pytest.raises(ModelError, match="com.example::Magic") as e:
        load_onnx(path)
    _one_line(e)


def test_a_plain_matmul_model_is_injectable(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    b = np.array([1.0, 2.0, 3.0], np.float32)
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["h"], name="proj"),
                            helper.make_node("Add", ["h", "B"], ["y"], name="add")],
                 [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "B")])
    m = load_onnx(path)
    assert [(i.name, i.component) for i in describe(m)] == [("proj.weight", "linear"), ("proj.bias", "linear")]
    assert m.proj.weight.shape == (3, 4)  # torch layout (out, in)
    x = torch.randn(5, 4)
    torch.testing.assert_close(m(x), torch.nn.functional.linear(x, m.proj.weight, m.proj.bias))
    with torch.no_grad():
        m.proj.weight[0, 1] += 1.0
    torch.testing.assert_close(m(x), torch.nn.functional.linear(x, m.proj.weight, m.proj.bias))


def test_data_of_the_wrong_shape_names_both_shapes(fp32):
    with pytest.raises(DataError, match=r"expects inputs of shape \(batch, 1, 8, 8\), got data of shape "
                                        r"\(1000, 1, 40\)") as e:
        hw.evaluate(fp32, hw.load_data("mnist1d", "test"))
    _one_line(e)


def test_onnxruntime_shape_errors_become_data_errors(tmp_path):
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], [w], inp=("x", ["n", "k"]))
    m = load_onnx(path)
    assert m.input_shape == (None, None)
    with pytest.raises(DataError, match=r"onnxruntime cannot run the model on data of shape \(2, 5\)") as e:
        m(torch.zeros(2, 5))
    _one_line(e)


def test_direct_construction_and_repr(fp32):
    assert isinstance(fp32, OnnxModule)
    assert "injectable tensors" in repr(fp32) and "onnx node '/conv1/Conv'" in repr(fp32)
    with pytest.raises(ModelError, match="call the OnnxModule"):
        fp32.conv1(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ModelError, match="no injectable tensor 'conv9.weight'"):
        fp32.binding("conv9.weight")


INT4_FLIPS = """
name = "int4-flips"
[format]
kind = "int4"
scale = "per-channel"
[[faults]]
kind = "bitflip"
ber = 0.02
"""


def test_int4_file_codes_and_bit_flips(cnn, digits, tmp_path, snapshot):
    from hwfault.spec import parse_chip

    spec = parse_chip(INT4_FLIPS)
    export_onnx(cnn, tmp_path / "int4.onnx", data=digits, fmt="int8", chip=spec)
    m = load_onnx(tmp_path / "int4.onnx")
    weights = [b for b in m.bindings if b.quantized]
    assert len(weights) == 4 and all(b.bits == 4 and (b.lo, b.hi) == (-8, 7) for b in weights)
    assert all(np.array_equal(m.codes(b.name), b.stored) and b.describe()["hwfault_grid"] for b in weights)
    ref = to_float(quantize_model(cnn, 4, per_channel=True)).eval()
    chip, ref_chip = Chip.build(spec, m), Chip.build(spec, ref)
    take, same = snapshot
    snap = take(m)
    hit_minus_8 = False
    for seed in range(3):
        programmed = chip.program(torch.Generator().manual_seed(seed))
        with perturbed(chip.selection, chip.delta(programmed)), perturbed(ref_chip.selection,
                                                                          ref_chip.delta(programmed)):
            torch.testing.assert_close(logits(m, digits), logits(ref, digits), rtol=0, atol=ATOL)
            fed = np.concatenate([m.codes(n).reshape(-1) for n in chip.selection.names]).astype(np.int64)
            assert np.array_equal(fed & 0xF, chip.view.encode(programmed.float()).numpy())
            hit_minus_8 |= bool((fed == -8).any())  # the Clip to [-7, 7] is bypassed: -8 reads as -8
        assert same(m, snap)
    assert hit_minus_8


def test_an_onnx_model_is_not_exported_again(fp32, tmp_path):
    from hwfault.errors import ExportError

    with pytest.raises(ExportError, match="already an ONNX model"):
        export_onnx(fp32, tmp_path / "again.onnx", sample_input=torch.zeros(2, 1, 8, 8))
