"""Tasks (issue 13): what an output means and how it is scored, against reference implementations,
through every analysis, with data that are not tensors in memory, and the error paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import hwfault as hw
from hwfault.cli import main
from hwfault.evaluation import Golden, loss_and_grad, score_against
from hwfault.tasks import IGNORE, get_task, using


class TinyLM(nn.Module):
    """Token ids (B, T) in, (B, T, V) logits out: embedding, a causal running mean, an MLP, a head."""

    def __init__(self, vocab: int = 13, dim: int = 12):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.emb(ids)
        h = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1, device=ids.device)[None, :, None]  # causal
        return self.head(F.gelu(self.fc(h)))


class Reg(nn.Module):
    def __init__(self, k: int = 2):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, k)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class TwoHeads(nn.Module):
    """Returns (logits, features), as many users' models do."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(h), h


@pytest.fixture(scope="module")
def lm_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 13, (40, 10), generator=g)
    y = torch.roll(x, -1, 1)
    y[:, -1] = IGNORE  # the last position has no next token
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return TinyLM().eval()


@pytest.fixture(scope="module")
def reg_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=g)
    return TensorDataset(x, torch.stack([x[:, 0] - x[:, 1], x[:, 2] * 0.5], 1))


@pytest.fixture(scope="module")
def reg():
    torch.manual_seed(0)
    return Reg().eval()


# ----------------------------------------------------------------------------- reference implementations


def test_lm_scores_equal_a_direct_computation(lm, lm_data):
    x, y = lm_data.tensors
    with torch.no_grad():
        out = lm(x).double()
    ce = F.cross_entropy(out.reshape(-1, 13), y.reshape(-1), ignore_index=IGNORE)
    valid = y != IGNORE
    acc = ((out.argmax(-1) == y) & valid).sum() / valid.sum()
    for bs in (1, 7, 1024):
        r = hw.evaluate(lm, lm_data, task="lm", batch_size=bs)
        assert r.loss == pytest.approx(float(ce), rel=1e-6)
        assert r.metrics["perplexity"] == pytest.approx(math.exp(float(ce)), rel=1e-6)
        assert r.accuracy == r.metrics["token_accuracy"] == pytest.approx(float(acc))
        assert r.metric == r.metrics["perplexity"] and not r.higher_is_better and r.n == 40


def test_lm_gradient_is_the_token_mean_and_does_not_depend_on_batches(lm, lm_data):
    x, y = lm_data.tensors
    params = list(lm.parameters())
    out = lm(x)
    want = torch.autograd.grad(F.cross_entropy(out.reshape(-1, 13), y.reshape(-1), ignore_index=IGNORE), params)
    for bs in (3, 40):
        r, g = loss_and_grad(lm, lm_data, params, task="lm", batch_size=bs)
        for a, b in zip(g, want):
            assert torch.allclose(a, b, atol=1e-6)


def test_regression_scores_and_the_tolerance_rule(reg, reg_data):
    x, y = reg_data.tensors
    with torch.no_grad():
        out = reg(x).double()
    r = hw.evaluate(reg, reg_data, task=hw.Regression(tolerance=0.5), batch_size=16)
    assert r.loss == pytest.approx(float(F.mse_loss(out, y.double())), rel=1e-9) == r.metrics["mse"]
    assert r.metrics["mae"] == pytest.approx(float((out - y).abs().mean()), rel=1e-9)
    assert r.accuracy == pytest.approx(float(((out - y).abs() <= 0.5).all(1).double().mean()))
    t = hw.Regression(tolerance=0.2)
    golden = Golden.of(out.float(), y, task=t)
    moved = out.float().clone()
    moved[3, 1] += 0.25          # beyond the tolerance: one SDC input
    moved[5, 0] += 0.15          # within it: not an SDC
    m = score_against(moved, y, golden)
    assert m["sdc"] == 1 and m["sdc_rate"] == pytest.approx(1 / 60) and m["due"] == 0
    moved[7, 0] = float("nan")
    m = score_against(moved, y, golden)
    assert m["due"] == 1 and m["sdc_rate"] == pytest.approx(2 / 60) and m["loss"] is None


def test_lm_sdc_counts_tokens_the_golden_run_got_right(lm, lm_data):
    x, y = lm_data.tensors
    with torch.no_grad():
        out = lm(x)
    golden = Golden.of(out, y, task="lm")
    right = golden.correct
    assert right.shape == y.shape and int(right.sum()) > 0
    i, j = [int(v) for v in torch.nonzero(right)[0]]
    wrong = torch.nonzero(~right & (y != IGNORE))[0]
    bad = out.clone()
    bad[i, j, golden.pred[i, j]] -= 100.0            # a correct token changes: SDC
    bad[wrong[0], wrong[1], :] = bad[wrong[0], wrong[1], :].flip(0)  # a wrong one changes: not counted
    m = score_against(bad, y, golden)
    assert m["sdc"] == 1 and m["sdc_rate"] == pytest.approx(1 / int(right.sum()))


def test_a_user_task_drives_the_analyses(reg, reg_data):
    class Hit(hw.Task):
        name, metric_name, higher_is_better = "hit", "hit_rate", True

        def loss(self, out, y):
            return (out - y).pow(2).mean(1)

        def metric(self, out, y):
            return ((out - y).abs() < 0.5).all(1).double()

        def sdc(self, out, golden, y):
            return ((out - golden).abs() > 0.5).any(1)

    x, y = reg_data.tensors
    r = hw.evaluate(reg, reg_data, task=Hit())
    with torch.no_grad():
        assert r.metric == pytest.approx(float(((reg(x) - y).abs() < 0.5).all(1).double().mean()))
    s = hw.sweep(reg, reg_data, epsilons=[0.5, 3.0], methods="random,gradient", trials=3, task=Hit())
    rows = s.to_dict()["results"]
    assert {"hit_rate", "metric"} <= set(rows[0])
    grad = [p for p in rows if p["method"] == "gradient"]
    assert grad[1]["loss"] > grad[0]["loss"] > s.clean["loss"]


# ----------------------------------------------------------------------------- the analyses on a language model


def test_lm_through_sweep_estimate_campaign_and_bits(lm, lm_data):
    s = hw.sweep(lm, lm_data, epsilons=[0.5, 2.0], trials=4, task="lm")
    d = s.to_dict()
    assert d["task"]["name"] == "lm" and {"perplexity", "token_accuracy", "metric"} <= set(d["clean"])
    by = {(p["method"], p["eps"]): p for p in d["results"]}
    for e in (0.5, 2.0):  # the worst case is worse than random at the same eps, in perplexity
        assert by[("gradient", e)]["perplexity"] > by[("random", e)]["perplexity"]
        assert by[("multistep", e)]["perplexity"] >= by[("gradient", e)]["perplexity"] * (1 - 1e-9)
        assert by[("random", e)]["perplexity"] == pytest.approx(
            np.mean([math.exp(v) for v in [by[("random", e)]["loss"]]]), rel=0.2)
    e = hw.estimate(lm, lm_data, "int8-sram-0.5v", trials=6, task="lm", per_fault=False, severities=())
    ed = e.to_dict()
    assert len(ed["random"]["perplexitys"]) == 6 and ed["random"]["perplexity_worst"] >= ed["random"]["perplexity_mean"]
    assert ed["worst_case"]["one_step"]["perplexity"] >= ed["random"]["perplexity_mean"] * (1 - 1e-9)
    assert ed["certified"]["accuracy"] is None and "classification margins" in ed["certified"]["reason"]
    c = hw.campaign(lm, lm_data, "int8-sram-0.5v", trials=12, task="lm").to_dict()
    assert c["golden"]["perplexity"] == pytest.approx(math.exp(c["golden"]["loss"]))
    assert 0 <= c["overall"]["sdc_inputs_mean"] <= 1
    b = hw.bits(lm, lm_data, task="lm", max_flips=40, random_runs=2).to_dict()
    assert b["until_factor"] == 10 and b["until"] == pytest.approx(10 * b["quantized"]["perplexity"])
    assert b["task"]["metric"] == "perplexity"
    if b["flips"] is not None:  # the search stops when it reaches ten times the perplexity
        assert b["history"][-1] >= b["until"]


def test_faults_are_undone_for_every_task(lm, lm_data, reg, reg_data, snapshot):
    take, same = snapshot
    for model, data, task in ((lm, lm_data, "lm"), (reg, reg_data, "regression")):
        snap = take(model)
        hw.sweep(model, data, epsilons=[1.0], trials=2, task=task)
        hw.estimate(model, data, "rram-4bit", trials=2, task=task, per_fault=False, severities=())
        assert same(model, snap)


# ----------------------------------------------------------------------------- data that are not tensors


class Items(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_dataset_or_dataloader_evaluates_like_the_tensors(mlp, digits):
    ref = hw.evaluate(mlp, digits)
    x, y = digits.tensors
    for data in (Items(x, y), DataLoader(digits, batch_size=33), Subset(digits, range(len(digits))), (x, y)):
        r = hw.evaluate(mlp, data)
        assert r.accuracy == ref.accuracy and r.loss == pytest.approx(ref.loss, rel=1e-9)
    s = hw.sweep(mlp, DataLoader(digits, batch_size=100), epsilons=[0.5], methods="gradient")
    assert s.results[0].points[0].accuracy < ref.accuracy


def test_npy_files_and_shard_directories_read_lazily(tmp_path, mlp, digits):
    x, y = (t.numpy() for t in digits.tensors)
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "x_test.npy", x.astype(np.float64))
    np.save(tmp_path / "mm" / "y_test.npy", y.astype(np.int32))
    (tmp_path / "sh").mkdir()
    for k, i in enumerate(range(0, len(x), 200)):
        np.savez(tmp_path / "sh" / f"test-{k:03d}.npz", x=x[i:i + 200], y=y[i:i + 200])
    ref = hw.evaluate(mlp, digits)
    for path in (tmp_path / "mm", tmp_path / "mm" / "x_test.npy", tmp_path / "sh"):
        ds = hw.load_data(path)
        assert isinstance(ds, hw.ArrayDataset) and len(ds) == len(x)
        xb, yb = ds.batch(195, 205)  # across a shard boundary
        assert torch.equal(xb, torch.from_numpy(x[195:205])) and yb.dtype == torch.int64
        r = hw.evaluate(mlp, ds, batch_size=64)
        assert r.accuracy == ref.accuracy and r.loss == pytest.approx(ref.loss, rel=1e-6)


def test_integer_inputs_stay_integer_for_lm_and_become_float_for_classification(tmp_path):
    x = np.random.default_rng(0).integers(0, 13, (20, 10))
    np.savez(tmp_path / "tok.npz", x=x, y=np.roll(x, -1, 1))
    d = hw.load_data(tmp_path / "tok.npz", task="lm")
    assert d.tensors[0].dtype == torch.int64 and d.tensors[1].shape == (20, 10)
    np.savez(tmp_path / "img.npz", x=(x * 10).astype(np.uint8), y=x[:, 0])
    assert hw.load_data(tmp_path / "img.npz").tensors[0].dtype == torch.float32


# ----------------------------------------------------------------------------- the command line


def _pt2(model, example, path, batch="dynamic"):
    dyn = {list(__import__("inspect").signature(model.forward).parameters)[0]: {0: torch.export.Dim("batch", min=1)}}
    prog = torch.export.export(model, (example,), dynamic_shapes=dyn if batch == "dynamic" else None)
    torch.export.save(prog, str(path))
    return path


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_users_pt2_language_and_regression_models_from_the_cli(tmp_path, capsys, lm, lm_data, reg, reg_data):
    x, y = lm_data.tensors
    lm_path = _pt2(lm, x[:2], tmp_path / "lm.pt2")
    np.savez(tmp_path / "lm.npz", x=x.numpy(), y=y.numpy())
    xr, yr = reg_data.tensors
    reg_path = _pt2(reg, xr[:2], tmp_path / "reg.pt2")
    np.savez(tmp_path / "reg.npz", x=xr.numpy(), y=yr.numpy())
    for model, data, task in ((lm_path, "lm.npz", "lm"), (reg_path, "reg.npz", "regression")):
        js = tmp_path / f"{task}-sweep.json"
        code, _, err = _cli(capsys, "sweep", "-m", model, "-d", tmp_path / data, "--task", task, "--eps", "0.5,2",
                            "--trials", "2", "--json", js)
        assert code == 0, err
        d = json.loads(js.read_text())
        key = "perplexity" if task == "lm" else "mse"
        assert key in d["clean"] and all(key in r and "loss" in r for r in d["results"])
        js = tmp_path / f"{task}-est.json"
        code, _, err = _cli(capsys, "estimate", "-m", model, "-d", tmp_path / data, "--task", task, "-c",
                            "int8-sram-0.5v", "--trials", "4", "--no-breakdown", "--json", js)
        assert code == 0, err
        assert key in json.loads(js.read_text())["clean"]
        js = tmp_path / f"{task}-camp.json"
        code, _, err = _cli(capsys, "campaign", "-m", model, "-d", tmp_path / data, "--task", task, "-c",
                            "int8-sram-0.5v", "--trials", "6", "--json", js)
        assert code == 0, err
        d = json.loads(js.read_text())
        assert d["campaign"]["task"] == task and key in d["golden"]


def test_a_model_with_two_outputs_and_a_model_from_python_source(tmp_path, capsys, monkeypatch, digits):
    torch.manual_seed(0)
    m = TwoHeads().eval()
    x, y = digits.tensors
    path = _pt2(m, x[:2], tmp_path / "two.pt2")
    js = tmp_path / "two.json"
    code, _, err = _cli(capsys, "sweep", "-m", path, "-d", "digits", "--eps", "0.1", "--methods", "gradient",
                        "--json", js)
    assert code == 0, err  # (logits, features): the first output is scored
    code, _, err = _cli(capsys, "sweep", "-m", path, "-d", "digits", "--eps", "0.1", "--output", "5")
    assert code == 2 and err.count("\n") == 1 and "--output 5" in err
    from safetensors.torch import save_file

    (tmp_path / "mymodels.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class TwoHeads(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)\n\n"
        "    def forward(self, x):\n        h = torch.relu(self.fc1(x.flatten(1)))\n        return self.fc2(h), h\n\n"
        "def build():\n    return TwoHeads()\n")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    monkeypatch.chdir(tmp_path)
    js2 = tmp_path / "src.json"
    code, _, err = _cli(capsys, "sweep", "-m", "mymodels:build", "--weights", "w.safetensors", "-d", "digits",
                        "--eps", "0.1", "--methods", "gradient", "--json", js2)
    assert code == 0, err
    a, b = json.loads(js.read_text()), json.loads(js2.read_text())
    assert a["clean"] == pytest.approx(b["clean"]) and a["results"][0]["accuracy"] == b["results"][0]["accuracy"]
    code, _, err = _cli(capsys, "sweep", "-m", "mymodels:nothere", "-d", "digits", "--eps", "0.1")
    assert code == 2 and "no callable 'nothere'" in err
    code, _, err = _cli(capsys, "sweep", "-m", "digits-mlp", "--weights", "w.safetensors", "--eps", "0.1")
    assert code == 2 and "--weights goes with" in err


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return {"scores": self.fc(x.flatten(1)), "aux": x.flatten(1)}


@pytest.mark.parametrize("case", ["lm-with-labels", "dict-without-output", "token-beyond-vocab", "classify-lm",
                                  "unknown-task", "tolerance-with-lm"])
def test_bad_task_input_gets_one_line_and_exit_2(tmp_path, capsys, lm, lm_data, digits, case):
    x, y = lm_data.tensors
    lm_path = _pt2(lm, x[:2], tmp_path / "lm.pt2")
    np.savez(tmp_path / "lm.npz", x=x.numpy(), y=y.numpy())
    np.savez(tmp_path / "labels.npz", x=x.numpy(), y=x[:, 0].numpy())
    big = x.clone()
    big[0, 0] = 99
    np.savez(tmp_path / "big.npz", x=big.numpy(), y=y.numpy())
    args = {
        "lm-with-labels": (lm_path, "labels.npz", "--task", "lm"),
        "token-beyond-vocab": (lm_path, "big.npz", "--task", "lm"),
        "classify-lm": (lm_path, "lm.npz", "--task", "lm", "--task", "classification"),
        "unknown-task": (lm_path, "lm.npz", "--task", "translation"),
        "tolerance-with-lm": (lm_path, "lm.npz", "--task", "lm", "--tolerance", "0.1"),
    }
    if case == "dict-without-output":
        d = _pt2(DictOut().eval(), digits.tensors[0][:2], tmp_path / "dict.pt2")
        args[case] = (d, None)
    model, data, *rest = args[case]
    code, _, err = _cli(capsys, "sweep", "-m", model, *(("-d", tmp_path / data) if data else ("-d", "digits")),
                        "--eps", "0.1", "--trials", "1", *rest)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    want = {"lm-with-labels": "next-token ids of shape (N, T)", "dict-without-output": "--output",
            "token-beyond-vocab": "token id 99", "classify-lm": "--task lm", "unknown-task": "unknown task",
            "tolerance-with-lm": "--tolerance goes with"}[case]
    assert want in err, err


def test_get_task_and_using():
    assert get_task("lm").name == "lm" and get_task(None).name == "classification"
    with using("regression") as t:
        assert get_task(None) is t
    assert get_task(None).name == "classification"
    with pytest.raises(hw.HwfaultError, match="did you mean 'lm'"):
        get_task("lmm")


@pytest.mark.parametrize("kind", ["fixed-batch", "two-outputs"])
def test_fixed_batch_and_two_output_archives_through_sweep_estimate_and_campaign(tmp_path, capsys, digits, kind):
    torch.manual_seed(0)
    m = TwoHeads().eval()
    x, y = (t[:120] for t in digits.tensors)
    path = _pt2(m, x[:2], tmp_path / f"{kind}.pt2", batch="fixed" if kind == "fixed-batch" else "dynamic")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    with torch.no_grad():
        want = float((m(x)[0].argmax(1) == y).double().mean())
    for cmd in (("sweep", "--eps", "0.3", "--methods", "random,gradient", "--trials", "2"),
                ("estimate", "-c", "int8-sram-nominal", "--trials", "3", "--no-breakdown", "--steps", "2"),
                ("campaign", "-c", "int8-sram-0.5v", "--trials", "6")):
        js = tmp_path / f"{cmd[0]}.json"
        code, _, err = _cli(capsys, cmd[0], "-m", path, "-d", tmp_path / "d.npz", *cmd[1:], "--json", js)
        assert code == 0, err
        d = json.loads(js.read_text())
        clean = d["golden"]["accuracy"] if cmd[0] == "campaign" else d["clean"]["accuracy"]
        assert abs(clean - want) <= (0.01 if cmd[0] == "campaign" else 1e-9)  # the campaign's golden run is int8


@pytest.fixture(scope="module")
def charlm():
    model = hw.load_model("pycode-charlm", requires_grad=False)
    x, y = hw.load_data("pycode").tensors
    return model, TensorDataset(x[:24], y[:24])


def test_the_zoo_language_model_knows_its_task_through_sweep_and_campaign(charlm):
    model, data = charlm
    assert model.task == "lm" and hw.evaluate(model, data).metric_name == "perplexity"
    s = hw.sweep(model, data, epsilons=[1.0], trials=2, steps=3)  # task from the model
    ppl = {r.method: r.points[0].extra["perplexity"] for r in s.results}
    assert ppl["multistep"] >= ppl["gradient"] > 1.2 * ppl["random"]
    c = hw.campaign(model, data, "int8-sram-0.5v", trials=4).to_dict()
    assert c["campaign"]["task"] == "lm" and 0 < c["overall"]["sdc_inputs_mean"] < 1  # a share of tokens


@pytest.mark.slow  # ~70 candidate evaluations of the 628k-parameter model per flip: 1-2 minutes
def test_the_zoo_language_model_bits_and_export(charlm, tmp_path):
    model, data = charlm
    few = TensorDataset(*(t[:6] for t in data.tensors))
    b = hw.bits(model, few, until_factor=2.0, max_flips=30, random_runs=1).to_dict()
    assert b["flips"] is not None and b["flips"] <= 30
    assert b["history"][-1] >= 2 * b["quantized"]["perplexity"]  # reached twice the perplexity
    rep = hw.export_onnx(model, tmp_path / "lm.onnx", data=few)
    assert rep.passed and rep.agreement == 1.0 and rep.max_abs_delta < 1e-4  # per-token parity on (B, T, V)
