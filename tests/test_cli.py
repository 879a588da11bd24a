"""The command line: happy paths write what they promise; bad input gets one line and exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hwfault.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    code, _, err = run(capsys, "sweep", "--model", "digits-cnn", "--data", "digits", "--norm", "2",
                       "--eps", "0.1,1", "--methods", "random,gradient", "--trials", "3",
                       "--json", str(js), "--plot", str(png))
    assert code == 0, err
    d = json.loads(js.read_text())
    assert d["model"] == "digits-cnn" and d["norm"] == 2 and d["n"] == "all"
    assert [(r["method"], r["eps"]) for r in d["results"]] == [("random", 0.1), ("random", 1.0),
                                                               ("gradient", 0.1), ("gradient", 1.0)]
    assert d["results"][0]["trials"] == 3 and "first_order" in d["results"][2]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "gradient from evaluation data" in err


def test_sweep_json_to_stdout_with_sparse_linf(capsys):
    code, out, _ = run(capsys, "sweep", "-m", "digits-mlp", "--norm", "inf", "--eps", "0.05", "--n", "100",
                       "--params", "fc*.weight", "--methods", "gradient", "--json", "-")
    assert code == 0
    d = json.loads(out)
    assert d["n"] == 100 and d["norm"] == "inf" and d["params"] == ["fc1.weight", "fc2.weight", "fc3.weight"]


def test_probe_by_component_and_layer(tmp_path, capsys):
    js, png = tmp_path / "p.json", tmp_path / "p.png"
    code, _, err = run(capsys, "probe", "--model", "digits-cnn", "--data", "digits", "--by", "component",
                       "--norm", "inf", "--eps", "0.1,1", "--n", "10", "--json", str(js), "--plot", str(png))
    assert code == 0, err
    d = json.loads(js.read_text())
    assert {g["group"] for g in d["groups"]} == {"conv", "norm", "linear"}
    assert all(g["n_effective"] == 10 for g in d["groups"])
    assert png.exists()
    code, out, _ = run(capsys, "probe", "-m", "digits-cnn", "--by", "layer", "--eps", "1", "--json", "-")
    assert code == 0
    assert [g["group"] for g in json.loads(out)["groups"]] == ["conv1", "bn1", "conv2", "bn2", "fc1", "fc2"]


def test_zoo_list_json(capsys):
    code, out, _ = run(capsys, "zoo", "list", "--json")
    assert code == 0
    assert {m["name"] for m in json.loads(out)["models"]} >= {"digits-cnn", "mnist1d-transformer"}


def _npz(tmp_path, name, **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize("args, needle", [
    (["sweep", "--model", "digits-cn", "--eps", "1"], "did you mean 'digits-cnn'"),
    (["sweep", "--model", "digits-cnn", "--data", "digts", "--eps", "1"], "did you mean 'digits'"),
    (["sweep", "--model", "digits-cnn", "--eps", "0"], "eps > 0"),
    (["sweep", "--model", "digits-cnn", "--eps", "-0.1"], "eps > 0"),
    (["sweep", "--model", "digits-cnn", "--eps", "abc"], "comma-separated numbers"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--norm", "0.5"], "p >= 1"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--n", "0"], "n > 0"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--n", "-5"], "n > 0"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--params", "nothing*"], "no parameter matches"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--types", "convolution"], "did you mean 'conv'"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--methods", "gradiant"], "did you mean 'gradient'"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--trials", "0"], "trials >= 1"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--data", "missing.npz"], "not found"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--data", "mnist1d"], "cannot run on data of shape"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--probe", "val"], "unknown split"),
    (["sweep", "--model", "digits-cnn", "--eps", "1", "--bogus"], "No such option"),
    (["probe", "--model", "digits-cnn", "--eps", "1", "--by", "row"], "component or layer"),
    (["zoo", "train", "digits-rnn"], "unknown zoo model"),
])
def test_bad_input_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


def test_malformed_npz_and_unfit_data(tmp_path, capsys):
    bad = _npz(tmp_path, "bad.npz", x=np.zeros((4, 64)))
    code, _, err = run(capsys, "sweep", "-m", "digits-cnn", "--eps", "1", "--data", bad)
    assert code == 2 and "missing ['y']" in err
    many = _npz(tmp_path, "many.npz", x=np.zeros((4, 1, 8, 8)), y=np.array([0, 1, 2, 11]))
    code, _, err = run(capsys, "sweep", "-m", "digits-cnn", "--eps", "1", "--data", many)
    assert code == 2 and "10 outputs but the data have label 11" in err


def test_console_script_exit_code_and_no_traceback():
    r = subprocess.run([sys.executable, "-m", "hwfault.cli", "sweep", "--model", "nope", "--eps", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown model 'nope'") and "Traceback" not in r.stderr
