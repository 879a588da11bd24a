"""A stored value one fault from NaN/Inf (an FP8 E4M3 element next to its NaN code, a shared scale
read as NaN, an fp32 exponent flip to Inf): the gradient oracle cannot rank it (its loss change is not
a number), yet Monte-Carlo draws it, so the worst case weighs it apart and the bracket still holds."""

import math

import torch

import hwfault as hw
from hwfault.constraints import BitSet, CandidateSet

from test_blockformats import _tiny_scale_set

NAN, INF = float("nan"), float("inf")


def test_a_candidate_set_gives_its_nonfinite_point_where_the_gradient_is_largest():
    deltas = torch.tensor([[0.1, -0.2], [INF, 0.3], [0.5, NAN], [0.0, 0.2]], dtype=torch.float64)
    s = CandidateSet(deltas, n=2)
    g = torch.tensor([5.0, 1.0, -3.0, 9.0], dtype=torch.float64)
    p = s.nonfinite_point(g)
    assert torch.isnan(p[2]) and bool((p[[0, 1, 3]] == 0).all())  # row 2 (|g| 3) beats row 1 (|g| 1); rows 0, 3 have none
    assert s.contains(p)
    q = s.nonfinite_point(torch.tensor([0.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    assert q[1] == INF and s.contains(q)
    wrong = torch.zeros(4, dtype=torch.float64)
    wrong[0] = NAN
    assert not s.contains(wrong)  # row 0 has no non-finite candidate
    assert CandidateSet(deltas.nan_to_num(0.0, 0.0, 0.0), n=2).nonfinite_point(g) is None
    assert CandidateSet(deltas, n=0).nonfinite_point(g) is None
    # the linear oracle itself still ranks finite candidates only
    assert bool(torch.isfinite(s.maximize(g)).all())


def test_a_scale_set_gives_the_block_read_with_a_nan_scale():
    s = _tiny_scale_set()  # site 1 (elements 3, 4) has a NaN candidate
    p = s.nonfinite_point(torch.ones(10, dtype=torch.float64))
    assert bool(torch.isnan(p[[3, 4]]).all()) and bool((p[[0, 1, 2, 5, 6, 7, 8, 9]] == 0).all())
    assert s.contains(p)
    other = torch.zeros(10, dtype=torch.float64)
    other[[0, 1, 2]] = NAN
    assert not s.contains(other)  # site 0 has no NaN scale among its candidates


def test_the_fp8_worst_case_includes_the_nan_one_flip_away(digits):
    from hwfault.analyses.estimate import estimate
    from hwfault.report.labels import bracket_rows

    model = hw.load_model("digits-mlp")
    r = estimate(model, digits, "fp8-e4m3-sram-0.55v", trials=6, seed=0, steps=2, per_fault=False,
                 severities=()).to_dict()
    wc, mc = r["worst_case"], r["random"]
    assert wc["one_step"]["nonfinite_candidate"] and wc["one_step"]["nonfinite"] > 0
    assert wc["one_step"]["loss"] is None or not math.isfinite(wc["one_step"]["loss"])  # (JSON: null)
    assert "searched_accuracy" in wc["one_step"]  # what the gradient search alone found, kept beside it
    for k in ("one_step", "multi_step", "bit_search"):
        assert wc[k]["accuracy"] <= mc["accuracy_min"] + 1e-12
    assert wc["bit_search"]["flips"] == 1
    notes = {label: note for label, _, note in bracket_rows(r)}
    assert any("NaN" in n for n in notes.values())


def test_formats_without_nan_codes_have_no_nonfinite_worst_case(digits):
    from hwfault.analyses.estimate import estimate

    r = estimate(hw.load_model("digits-mlp"), digits, "int8-sram-0.5v", trials=4, seed=0, steps=2, per_fault=False,
                 severities=()).to_dict()
    assert all("nonfinite_candidate" not in r["worst_case"][k] for k in ("one_step", "multi_step", "bit_search"))


def test_a_bitset_counts_a_nonfinite_value_as_one_flip():
    base = torch.tensor([1.0, 2.0], dtype=torch.float64)
    s = BitSet(torch.tensor([[INF, 0.5], [0.25, 1.0]], dtype=torch.float64), 1, base=base,
               encode=lambda v: v.long(), bits=2)
    p = s.nonfinite_point(torch.ones(2, dtype=torch.float64))
    assert p[0] == INF and s.contains(p)
