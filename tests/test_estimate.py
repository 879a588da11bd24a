"""The chip bracket: worst case <= one step <= Monte-Carlo min <= mean <= clean, for every preset."""

import json

import pytest
import torch

import hwfault as hw
from hwfault.faults import Chip
from hwfault.cli import main
from hwfault.analyses.estimate import estimate
from hwfault.spec import list_chips

TOL = 0.01  # accuracy points of slack for the ordering (one input in 540 is 0.0019)


@pytest.fixture(scope="module")
def model():
    return hw.load_model("digits-cnn")


@pytest.mark.parametrize("chip", list_chips())
def test_bracket_is_ordered_for_every_preset(chip, model, digits, snapshot):
    take, same = snapshot
    snap = take(model)
    r = estimate(model, digits, chip, trials=12, seed=0, steps=5, per_fault=False, severities=()).to_dict()
    assert same(model, snap)
    wc, mc = r["worst_case"], r["random"]
    worst = [wc["multi_step"]["accuracy"]] + ([wc["bit_search"]["accuracy"]] if "bit_search" in wc else [])
    assert max(worst) <= wc["one_step"]["accuracy"] + TOL
    assert wc["one_step"]["accuracy"] <= mc["accuracy_min"] + TOL
    assert mc["accuracy_min"] <= mc["accuracy_p01"] <= mc["accuracy_mean"] + 1e-12
    assert mc["accuracy_mean"] <= r["clean"]["accuracy"] + TOL
    lo, hi = mc["accuracy_ci95"]
    assert lo - 1e-12 <= mc["accuracy_mean"] <= hi + 1e-12


def test_estimate_json_contract_and_report(tmp_path, capsys):
    js, rep = tmp_path / "e.json", tmp_path / "e.html"
    code = main(["estimate", "--model", "digits-cnn", "--data", "digits", "--chip", "int8-sram-0.5v",
                 "--trials", "10", "--json", str(js), "--report", str(rep)])
    _, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(js.read_text())
    assert set(d["clean"]) >= {"accuracy"}
    assert set(d["random"]) >= {"trials", "accuracy_mean", "accuracy_ci95", "accuracy_p01", "accuracy_min"}
    assert set(d["worst_case"]["one_step"]) >= {"accuracy", "loss_change", "first_order"}
    assert "accuracy" in d["worst_case"]["multi_step"]
    assert set(d["worst_case"]["bit_search"]) >= {"accuracy", "flips"}
    assert d["faults"] and all({"random", "worst_case"} <= set(f) for f in d["faults"])
    html = rep.read_text()
    assert "<img src=\"data:image/png;base64," in html and "bit search" in html


@pytest.mark.parametrize("chip", ["int8-sram-0.5v", "rram-4bit"])
def test_trial_t_is_the_chip_drawn_from_seed_and_t(model, digits, chip):
    """Monte-Carlo trial t is a pure function of (seed, t): its accuracy equals chip t recomputed alone
    (programmed from a generator seeded from (seed, t); read noise redrawn per batch of 64 inputs), and
    another seed gives other chips."""
    from hwfault.analyses.realise import READ_BATCH
    from hwfault.evaluation import logits
    from hwfault.params import perturbed
    from hwfault.rng import generator
    from hwfault.spec import load_chip

    got = estimate(model, digits, chip, trials=4, seed=3, per_fault=False, severities=(), certified=None)
    dev = Chip.build(load_chip(chip), model)
    x, y = digits.tensors
    for t in (3, 0):                               # computed out of order: no state carries between trials
        gen = generator(3, t)
        programmed = dev.program(gen)
        outs = []
        for i in range(0, len(x), READ_BATCH):
            values = dev.read(programmed, gen) if dev.transient else programmed
            with perturbed(dev.selection, (values - dev.view.w.double()).float()):
                outs.append(logits(model, (x[i:i + READ_BATCH], None)))
        acc = float((torch.cat(outs).argmax(1) == y).double().mean())
        assert got.random["accuracies"][t] == pytest.approx(acc, abs=1.01 / len(y))
    other = estimate(model, digits, chip, trials=4, seed=4, per_fault=False, severities=(), certified=None)
    assert other.random["accuracies"] != got.random["accuracies"]


def test_bits_worst_case_flips(capsys, tmp_path):
    js = tmp_path / "b.json"
    code = main(["bits", "--model", "digits-cnn", "--data", "digits", "--format", "int8", "--until", "0.11",
                 "--runs", "3", "--json", str(js)])
    assert code == 0
    d = json.loads(js.read_text())
    assert d["flips"] is not None and d["flips"] <= 10
    assert d["history"][-1] <= 0.11 and len(d["history"]) == d["flips"]
    assert d["random_flips"] is None or d["random_flips"] >= 10 * d["flips"]
    assert {"flips", "random_flips", "history"} <= set(d)


@pytest.mark.parametrize("args, needle", [
    (["estimate", "-m", "digits-cnn", "--chip", "int8-sram-0.5"], "did you mean"),
    (["estimate", "-m", "digits-cnn", "--chip", "int8-sram-0.5v", "--trials", "0"], "trials >= 1"),
    (["estimate", "-m", "digits-cnn", "--chip", "int8-sram-0.5v", "--coverage", "1.5"], "coverage in (0, 1)"),
    (["chips", "show", "nope"], "unknown"),
    (["bits", "-m", "digits-cnn", "--format", "int32"], "int"),
    (["bits", "-m", "digits-cnn", "--until", "2"], "[0, 1]"),
])
def test_bad_input_one_line_exit_2(capsys, args, needle):
    code = main(args)
    _, err = capsys.readouterr()
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_models_without_gradients_get_monte_carlo_only(tmp_path):
    """Models that run outside autograd (ONNX files in onnxruntime) say so: worst cases skipped, not faked."""
    from hwfault import load_model
    from hwfault.analyses.estimate import estimate
    from hwfault.report import estimate_table, write_report

    model = load_model("digits-mlp")
    model.differentiable = False
    r = estimate(model, "digits", "int8-sram-0.55v", trials=3, severities=(1.0,))
    d = r.to_dict()
    assert "skipped" in d["worst_case"] and "Monte-Carlo only" in d["worst_case"]["skipped"]
    assert d["severity"]["one_step"] == [None] and d["random"]["trials"] == 3
    estimate_table(r)
    write_report(r, tmp_path / "r.html")
    write_report(r, tmp_path / "r.md")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_estimate_records_the_seconds_of_each_part():
    import hwfault as hw

    d = hw.estimate("digits-mlp", "digits", "int8-sram-0.5v", trials=4, severities=(1.0,)).to_dict()
    parts = d["seconds_by_part"]
    assert list(parts) == ["clean", "monte_carlo", "worst_case", "per_fault", "severity", "certified"]
    assert all(v >= 0 for v in parts.values()) and sum(parts.values()) <= d["seconds"] + 0.01
    assert 0 < d["clean_evaluation_seconds"] <= parts["clean"]


def test_the_searches_run_on_a_subset_and_their_points_are_scored_on_all_inputs(model, digits):
    """With search_inputs, the worst cases are found on that many evenly spaced inputs, and the accuracy
    reported is the point's accuracy on all the data (recomputed here from the returned parts)."""
    from hwfault.evaluation import evaluate
    from hwfault.params import perturbed
    from hwfault.search.results import total

    r = estimate(model, digits, "int8-sram-0.55v", trials=2, steps=2, per_fault=False, severities=(0.5, 1.0),
                 certified=None, search_inputs=64)
    d = r.to_dict()
    assert d["search"]["inputs"] == 64 and d["probe"].startswith("64 of the 540 evaluation inputs")
    dev = Chip.build(hw.load_chip("int8-sram-0.55v"), model)
    for w in (r.worst_case.one_step, r.worst_case.multi_step, r.worst_case.bit_search):
        with perturbed(dev.selection, total(list(w.parts)).float()):
            assert evaluate(model, digits).accuracy == pytest.approx(w.accuracy, abs=1e-12)
    # the severity curve: factor 1 is the nominal result itself; multi-step only with severity_steps
    assert d["severity"]["one_step"][1] == d["worst_case"]["one_step"]["accuracy"]
    assert d["severity"]["random_mean"][1] == d["random"]["accuracy_mean"]
    assert d["severity"]["multi_step"] == [None, None]
    full = estimate(model, digits, "int8-sram-0.55v", trials=2, steps=2, per_fault=False, severities=(),
                    certified=None, search_inputs=None).to_dict()
    assert full["search"]["inputs"] is None and full["random"] == d["random"]  # the chips do not depend on it


def test_search_inputs_must_be_positive_or_all(capsys):
    code = main(["estimate", "-m", "digits-cnn", "--chip", "int8-sram-0.5v", "--trials", "2", "--search-inputs", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "--search-inputs" in err and len(err.strip().splitlines()) == 1
