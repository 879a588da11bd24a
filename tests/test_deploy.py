"""The deployed artifact end to end: export from the CLI, faults on the ONNX file, certify, bad input."""

import json

import pytest

from hwfault import load_model
from hwfault.analyses.campaign.plan import make_plan
from hwfault.analyses.campaign.run import Recipe, run_campaign
from hwfault.cli import main
from hwfault.faults import Chip
from hwfault.spec import load_chip


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    fp32, int8 = d / "cnn.onnx", d / "cnn-int8.onnx"
    assert main(["export", "-m", "digits-cnn", "--out", str(fp32)]) == 0
    assert main(["export", "-m", "digits-cnn", "--chip", "int8-sram-0.5v", "--format", "int8", "--trials", "5",
                 "--out", str(int8), "--json", str(d / "int8.json")]) == 0
    return fp32, int8, json.loads((d / "int8.json").read_text())


def test_export_checks_itself_and_carries_its_robustness(onnx_files):
    from hwfault.export import read_metadata

    fp32, int8, rep = onnx_files
    assert rep["passed"] and rep["agreement"] >= 0.995
    meta = read_metadata(int8)
    text = json.dumps(meta)
    assert "int8-sram-0.5v" in text and "mc_mean" in text and "version" in text


def _campaign(model, chip, trials=60):
    spec = load_chip(chip)
    plan = make_plan(Chip.build(spec, load_model(model)), trials=trials)
    return run_campaign(Recipe(str(model), "digits", spec.to_dict(), seed=0), plan).summary()["overall"]


@pytest.mark.parametrize("which", [0, 1])
def test_onnx_campaigns_agree_with_torch_campaigns(onnx_files, which):
    """The same chip on the torch model and on its ONNX file (fp32 or int8 QCDQ): overlapping 95% intervals."""
    path = onnx_files[which]
    torch_side = _campaign("digits-cnn", "int8-sram-0.5v")
    onnx_side = _campaign(path, "int8-sram-0.5v")
    for key in ("accuracy_ci95", "sdc_ci95"):
        (a0, a1), (b0, b1) = torch_side[key], onnx_side[key]
        assert a0 <= b1 and b0 <= a1, (key, torch_side[key], onnx_side[key])
    assert abs(torch_side["accuracy_mean"] - onnx_side["accuracy_mean"]) < 0.02


def test_estimate_on_an_onnx_file_is_monte_carlo_only(onnx_files, capsys, tmp_path):
    js = tmp_path / "e.json"
    code, _, _ = run(capsys, "estimate", "-m", onnx_files[1], "-d", "digits", "--chip", "int8-sram-0.5v", "--trials", 5,
                     "--no-breakdown", "--json", js)
    d = json.loads(js.read_text())
    assert code == 0 and "skipped" in d["worst_case"] and d["random"]["trials"] == 5
    assert 0.5 < d["random"]["accuracy_mean"] <= 1.0


def test_bad_onnx_inputs(tmp_path, capsys, onnx_files):
    import onnx
    from onnx import TensorProto, helper

    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    relu = tmp_path / "relu.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), relu)
    cases = [
        (["estimate", "-m", text, "-d", "digits", "--chip", "int8-sram-0.5v"], "not an ONNX model"),
        (["campaign", "-m", relu, "-d", "digits", "--chip", "int8-sram-0.5v", "--trials", 3], "relu.onnx"),
        (["campaign", "-m", onnx_files[0], "-d", "mnist1d", "--chip", "int8-sram-0.5v", "--trials", 3], "shape"),
    ]
    for args, needle in cases:
        code, _, err = run(capsys, *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_certify_cli(tmp_path, capsys):
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    code, _, _ = run(capsys, "certify", "-m", "digits-mlp", "--norm", "inf", "--eps", "1e-4,1e-3", "--params", "*weight",
                     "--method", "ibp", "--json", js, "--plot", png)
    d = json.loads(js.read_text())
    assert code == 0 and png.stat().st_size > 0
    accs = [p["certified_accuracy"] for p in d["points"]]
    assert accs[0] >= accs[1] and all(0 <= a <= p["clean_accuracy"] for a, p in zip(accs, d["points"]))
    code, _, _ = run(capsys, "certify", "-m", "digits-cnn", "--chip", "int8-sram-nominal", "--json", js,
                     "--time-budget", "5")
    d = json.loads(js.read_text())
    assert code == 0 and any("rounding" in p["label"] for p in d["points"])
    assert all(p["seconds"] < 20 for p in d["points"])


def test_certify_cli_branch_and_bound_beats_crown(tmp_path, capsys):
    js = tmp_path / "b.json"
    for method in ("crown", "bab"):
        code, _, _ = run(capsys, "certify", "-m", "digits-mlp", "--norm", "inf", "--eps", "3e-3", "--types", "linear",
                         "--params", "*weight", "--method", method, "--json", tmp_path / f"{method}.json")
        assert code == 0
    crown, bab = (json.loads((tmp_path / f"{m}.json").read_text())["points"][0] for m in ("crown", "bab"))
    assert bab["method"] == "crown+bab" and bab["bab_certified"] > 0
    assert bab["certified_accuracy"] > 0.5 > crown["certified_accuracy"]


@pytest.mark.parametrize("args,needle", [
    (["-m", "digits-mlp", "--norm", "3", "--eps", "0.1"], "norm"),
    (["-m", "digits-mlp", "--norm", "inf", "--eps", "-1"], "eps"),
    (["-m", "digits-mlp"], "--chip"),
    (["-m", "mnist1d-lstm", "--norm", "inf", "--eps", "0.01"], "LSTM"),
    (["-m", "digits-mlp", "--norm", "inf", "--eps", "0.01", "--method", "bub"], "did you mean 'bab'"),
    (["-m", "digits-mlp", "--norm", "inf", "--eps", "0.01", "--time-budget", "-5"], "time budget"),
])
def test_certify_bad_input(capsys, args, needle):
    code, _, err = run(capsys, "certify", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_export_bad_input(capsys, tmp_path, onnx_files):
    code, _, err = run(capsys, "export", "-m", onnx_files[0], "-d", "digits", "--out", tmp_path / "x.onnx")
    assert code == 2 and "torch model" in err
    code, _, err = run(capsys, "export", "-m", "digits-cnn", "--format", "int3x", "--out", tmp_path / "y.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y.onnx").exists()
