"""The bit search over shared scales: each scale is ranked by the first-order damage of the whole block
it scales, the flips it reports are real flips of the stored scale codes (replayed through the codec),
and the estimate's bit search covers scale faults."""

import pytest
import torch

import hwfault as hw
from hwfault.analyses.bits import bits
from hwfault.blockformats import encode, parse
from hwfault.cli import main
from hwfault.evaluation import evaluate
from hwfault.params import select

from test_blockformats import _chip, _tiny_scale_set


def test_a_scales_gain_is_the_linear_gain_of_its_whole_block():
    s = _tiny_scale_set()
    g = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gain, choice = s.unit_gains(g)
    for site in range(4):
        exact = [float(g @ s.point(torch.tensor([site]), torch.tensor([j]))) for j in range(3)]
        assert gain[site].item() == pytest.approx(max(exact), abs=1e-12)
        assert exact[int(choice[site])] == pytest.approx(max(exact), abs=1e-12)
    assert s.unit_anchor().tolist() == [0, 3, 5, 8]  # the first element of each site's block


@pytest.mark.parametrize("fmt, group", [("mxfp4", None), ("int4", 32)])
def test_the_scale_flips_the_search_reports_replay_through_the_codec(fmt, group, digits):
    model = hw.load_model("digits-mlp")
    r = bits(model, digits, format=fmt, group=group, target="scales", max_flips=20, random_runs=1).to_dict()
    assert r["target"] == "scales" and r["flips"] is not None and r["flip_list"]
    assert all(f["target"] == "scale" for f in r["flip_list"])
    # replay: encode every weight, flip the reported bit of the reported scale code, decode
    sel = select(model, None, types="conv,linear").weights_only()
    block = parse(fmt, group)
    stored = {n: encode(p.detach(), block) for n, p in zip(sel.names, sel.params)}
    for f in r["flip_list"]:
        b = stored[f["param"]]
        per_row = b.scales.shape[1]
        row, col = divmod(f["block"], per_row)
        assert f["index"] == row * b.k + col * block.group  # the block's first weight
        scales = b.scales.clone()
        scales[row, col] ^= 1 << f["bit"]
        stored[f["param"]] = b.with_scales(scales)
    saved = [p.detach().clone() for p in sel.params]
    try:
        with torch.no_grad():
            for n, p in zip(sel.names, sel.params):
                p.copy_(stored[n].decode().to(p.dtype))
        replay = evaluate(model, digits).accuracy
    finally:
        with torch.no_grad():
            for p, s in zip(sel.params, saved):
                p.copy_(s)
    assert replay == pytest.approx(r["history"][-1], abs=1e-9) and replay <= r["until"]


def test_the_estimates_bit_search_covers_scale_faults(digits):
    from hwfault.analyses.estimate import estimate

    _, spec = _chip({"kind": "mxfp4"}, [{"kind": "bitflip", "count": 3, "target": "scales"}])
    r = estimate(hw.load_model("digits-cnn"), digits, spec, trials=4, seed=0, steps=2, per_fault=False,
                 severities=()).to_dict()
    wc = r["worst_case"]
    assert "bit_search" in wc and 1 <= wc["bit_search"]["flips"] <= 3 and wc["bit_search"]["budget"] == 3
    assert wc["bit_search"]["accuracy"] <= wc["one_step"]["accuracy"] + 1e-12  # (never weaker: keep_best)


@pytest.mark.parametrize("argv, needle", [(["--format", "int8", "--target", "scales"], "int8 has none"),
                                          (["--format", "mxfp4", "--target", "blocks"], "--target elements or scales")])
def test_bad_scale_targets_are_one_line_errors(argv, needle, capsys):
    code = main(["bits", "--model", "digits-mlp", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and needle in err and len(err.splitlines()) == 1
