"""Stuck-at cells in the shared scales of block formats: a stuck scale bit rescales its whole block
(only towards the stuck value), the covering set allows only those directions, the estimate bracket
holds, and bad specs are one line naming the field."""

import math

import pytest
import torch

from hwfault.cli import main

from test_blockformats import _chip


def _changed_blocks(chip, seed):
    v = chip.view
    new = chip.faults[0].sample(v, v.w_q.double(), torch.Generator().manual_seed(seed))
    sites = v.scale_sites
    out = []
    for s in range(sites.count):
        a, b = int(sites.start[s]), int(sites.stop[s])
        old, now = v.w_q.double()[a:b], new[a:b]
        if torch.equal(old, now):
            continue
        nz = old != 0
        ratio = now[nz] / old[nz]
        out.append((int(sites.codes[s]), ratio[torch.isfinite(ratio)].unique()))  # (float32 may overflow to Inf)
    return out


@pytest.mark.parametrize("sa, keep", [({"sa1": 0.02}, "set"), ({"sa0": 0.02}, "clear")])
def test_a_stuck_scale_bit_rescales_its_block_towards_the_stuck_value(sa, keep):
    chip, _ = _chip({"kind": "mxfp4"}, [{"kind": "stuck", "granularity": "bit", "target": "scales", **sa}])
    hits = 0
    for seed in range(10):
        for code, ratio in _changed_blocks(chip, seed):
            assert ratio.numel() <= 1  # the whole block by one factor: elements keep their codes
            if ratio.numel() == 0:
                continue
            r = float(ratio[0])
            new = code + round(math.log2(r))  # E8M0: the scale is 2^(code - 127)
            assert 2.0 ** (new - code) == r
            assert (new & code) == code if keep == "set" else (new & code) == new
            hits += 1
    assert hits > 0


def test_target_scales_leaves_element_codes_alone_and_both_is_two_parts():
    chip, _ = _chip({"kind": "mxint8"}, [{"kind": "stuck", "granularity": "bit", "target": "scales", "sa1": 0.05}])
    v = chip.view
    new = chip.faults[0].sample(v, v.w_q.double(), torch.Generator().manual_seed(0))
    assert bool((new != v.w_q.double()).any())
    sites = v.scale_sites
    for s in range(sites.count):  # each block is its old values times one power of two (MXINT8: int codes)
        a, b = int(sites.start[s]), int(sites.stop[s])
        old, now = v.w_q.double()[a:b], new[a:b]
        if not bool(torch.isnan(now).any()):  # (a scale stuck at the NaN code reads NaN for the whole block)
            assert bool(((old == 0) == (now == 0)).all())
    assert [n for n, _ in chip.parts()][-1] == "stuck-scales"
    both, _ = _chip({"kind": "mxint8"}, [{"kind": "stuck", "granularity": "bit", "target": "both", "sa1": 0.01}])
    assert [n for n, _ in both.parts()][-2:] == ["stuck", "stuck-scales"]


@pytest.mark.parametrize("target", ["scales", "both"])
def test_the_estimate_bracket_holds_for_stuck_scale_bits(target, digits):
    from hwfault.analyses.estimate import estimate
    from hwfault.inputs import load_model

    _, spec = _chip({"kind": "mxfp4"}, [{"kind": "stuck", "granularity": "bit", "target": target, "sa1": 2e-3,
                                         "sa0": 2e-3}])
    r = estimate(load_model("digits-cnn"), digits, spec, trials=8, seed=0, steps=3, per_fault=False,
                 severities=()).to_dict()
    wc, mc = r["worst_case"], r["random"]
    assert wc["multi_step"]["accuracy"] <= wc["one_step"]["accuracy"] + 0.02
    assert wc["one_step"]["accuracy"] <= mc["accuracy_min"] + 0.02
    assert "bit_search" in wc and wc["bit_search"]["accuracy"] <= wc["one_step"]["accuracy"] + 1e-12


def test_the_stuck_scale_set_allows_only_the_stuck_directions():
    chip, _ = _chip({"kind": "mxfp4"}, [{"kind": "stuck", "granularity": "bit", "target": "scales", "sa1": 0.01}])
    s = chip.faults[0].constraint(chip.view, 0.999)
    sites = chip.view.scale_sites
    bits = (sites.codes[:, None] >> torch.arange(sites.bits)) & 1
    assert bool((s.factors[bits == 1] == 0).all())  # SA1 cannot change a bit that is already 1
    assert bool((s.factors[bits == 0] != 0).any())


@pytest.mark.parametrize("fault, fmt, needle", [
    ({"kind": "stuck", "sa1": 0.01, "target": "scales"}, "mxfp4", 'granularity = "bit"'),
    ({"kind": "stuck", "sa1": 0.01, "granularity": "bit", "target": "scales"}, "int8", "stores no shared scales"),
])
def test_bad_stuck_scale_specs_are_one_line(fault, fmt, needle, tmp_path, capsys):
    def val(v):
        return f'"{v}"' if isinstance(v, str) else repr(v)

    body = "\n".join(f"{k} = {val(v)}" for k, v in fault.items())
    p = tmp_path / "c.toml"
    p.write_text(f'schema_version = 1\nname = "t"\n[format]\nkind = "{fmt}"\n[[faults]]\n{body}\n')
    code = main(["chips", "check", str(p)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "faults[0]" in err and needle in err and len(err.splitlines()) == 1


def test_a_stuck_fault_without_target_keeps_its_dict():
    from hwfault.faults.stuck import StuckFault

    d = StuckFault(kind="stuck", sa0=0.01, granularity="bit").model_dump(mode="json")
    assert "target" not in d
