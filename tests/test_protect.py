"""Protections: ECC/TMR on a budget of stored weight bits chosen by the worst-case ranking (against a
brute-force ranking), the redundancy's effect on the drawn flips (TMR 3p^2 - 2p^3, SECDED per word),
the covering set without the protected bits, costs, and the ``hwfault protect`` command's contract."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import hwfault as hw
from hwfault.cli import main
from hwfault.faults import Chip
from hwfault.faults.protection import ProtectedChip, protect_bits, ranking_gradient
from hwfault.faults.protection.bits import ECC_CHECK, ProtectedBits, ecc_silent_quantile, rice_bits
from hwfault.rng import generator
from hwfault.spec import ChipSpec, parse_chip

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(40, 6)
    return m, (x, torch.randint(0, 3, (40,)))


def _spec(fmt="int4", faults=None, protection=()):
    faults = [{"kind": "bitflip", "ber": 0.01}] if faults is None else faults
    return ChipSpec.model_validate({"schema_version": 1, "name": "t", "format": {"kind": fmt}, "faults": faults,
                                    "protection": list(protection)})


def _flipped_bits(view, values):
    """(k, bits) bool: the stored bits in which ``values`` differ from the fault-free stored values."""
    fin = torch.isfinite(values)
    codes = view.encode(torch.where(fin, values, view.w_q.double()).float())
    x = codes ^ view.encode(view.w_q)
    return ((x[:, None] >> torch.arange(view.bits)) & 1).bool()


# ----------------------------------------------------------------------------- choosing the bits


def test_ranked_choice_is_the_top_bits_by_first_order_damage_brute_force():
    """Every stored bit flipped by hand (int4 two's complement codes, decoded with the tensor's scale),
    its first-order loss change g * delta: the ranked choice is exactly the top n by magnitude."""
    m, data = _tiny()
    chip = Chip.build(_spec(), m)
    g = ranking_gradient(chip, m, data)
    v = chip.view
    gains = []
    for i in range(v.k):
        s = float(v.scale[i])
        code = int(round(float(v.w_q[i]) / s))
        for b in range(v.bits):
            u = (code & 0xF) ^ (1 << b)
            flipped = (u - 16 if u >= 8 else u) * s
            gains.append((abs(float(g[i]) * (flipped - float(v.w_q[i]))), i * v.bits + b))
    for n in (1, 7, 30, v.k * v.bits):
        want = sorted(pos for _, pos in sorted(gains, key=lambda t: (-t[0], t[1]))[:n])
        got = protect_bits(chip, "tmr", n, "ranked", grad=g).bits.tolist()
        assert got == want, n
    # the gradient is the loss gradient at the stored (quantised) weights: a finite difference agrees
    i, h = int(g.abs().argmax()), 1e-3
    loss = []
    for sgn in (1, -1):
        d = torch.zeros(v.k, dtype=torch.float64)
        d[i] = sgn * h
        with hw.perturbed(chip.selection, chip.delta(v.w_q.double() + d)):
            loss.append(hw.evaluate(m, data).loss)
    assert (loss[0] - loss[1]) / (2 * h) == pytest.approx(float(g[i]), rel=2e-2)


def test_magnitude_and_random_choices():
    m, data = _tiny()
    chip = Chip.build(_spec(), m)
    v, n = chip.view, 20
    mag = protect_bits(chip, "ecc", n, "magnitude").bits
    score = (v.w_q.double().abs()[:, None] * v.bit_deltas().double().abs()).reshape(-1)
    assert set(mag.tolist()) == set(torch.sort(score, descending=True, stable=True).indices[:n].tolist())
    r1, r2 = protect_bits(chip, "tmr", n, "random", seed=1).bits, protect_bits(chip, "tmr", n, "random", seed=1).bits
    assert torch.equal(r1, r2) and r1.unique().numel() == n and not torch.equal(r1, protect_bits(chip, "tmr", n, "random", seed=2).bits)
    assert protect_bits(chip, "tmr", 0.25, "random").n == round(0.25 * v.k * v.bits)


# ----------------------------------------------------------------------------- what the redundancy leaves


def test_protected_bits_never_flip_under_single_flip_injection_and_keep_the_draw_elsewhere():
    """Flips counted per chip: a flip of a protected bit is outvoted (TMR) or, alone, corrected (ECC);
    the unprotected draws are those of the unprotected chip (common random numbers)."""
    m, _ = _tiny()
    for scheme, count in (("tmr", 1), ("tmr", 5), ("ecc", 1)):  # ECC: two flips in a word would be a DUE
        spec = _spec(faults=[{"kind": "bitflip", "count": count}])
        plain = Chip.build(spec, m)
        pb = protect_bits(plain, scheme, 0.5, "random")
        chip = ProtectedChip(spec, plain.selection, plain.view.with_protected(pb), plain.faults)
        mask = pb.mask()
        for t in range(200):
            values = chip.program(generator(0, t))
            got = _flipped_bits(chip.view, values)
            base = _flipped_bits(plain.view, plain.program(generator(0, t)))
            assert torch.isfinite(values).all() and not (got & mask).any()
            assert torch.equal(got, base & ~mask)


def test_tmr_flips_protected_bits_at_the_majority_vote_rate():
    m, _ = _tiny()
    p = 0.05
    spec = _spec(faults=[{"kind": "bitflip", "ber": p}])
    plain = Chip.build(spec, m)
    pb = protect_bits(plain, "tmr", 0.5, "random")
    chip = ProtectedChip(spec, plain.selection, plain.view.with_protected(pb), plain.faults)
    mask = pb.mask()
    hits_p = hits_u = 0
    trials = 3000
    for t in range(trials):
        f = _flipped_bits(chip.view, chip.program(generator(1, t)))
        hits_p += int((f & mask).sum())
        hits_u += int((f & ~mask).sum())
    n_p, n_u = int(mask.sum()) * trials, int((~mask).sum()) * trials
    r = 3 * p * p - 2 * p ** 3
    for hits, n, rate in ((hits_p, n_p, r), (hits_u, n_u, p)):
        assert stats.binomtest(hits, n, rate).pvalue > 1e-3, (hits / n, rate)


def test_ecc_corrects_one_detects_two_passes_three():
    pb = ProtectedBits("ecc", torch.arange(0, 256, 2), nbits=8, total=512)  # 128 protected bits: 2 words
    w = torch.tensor
    gen = torch.Generator().manual_seed(0)
    keep, poison = pb.survivors(w([0, 1]), gen, 0.0, counted=True)  # one flip in word 0: corrected
    assert keep.tolist() == [1] and poison.numel() == 0
    keep, poison = pb.survivors(w([0, 2, 301]), gen, 0.0, counted=True)  # two in word 0: detected
    assert keep.tolist() == [301] and poison.tolist() == list(range(0, 16))  # the elements of word 0's bits
    keep, poison = pb.survivors(w([130, 132, 134, 3]), gen, 0.0, counted=True)  # three in word 1: silent
    assert sorted(keep.tolist()) == [3, 130, 132, 134] and poison.numel() == 0
    # a detected word reads NaN on the chip: a DUE
    m, _ = _tiny()
    spec = _spec(faults=[{"kind": "bitflip", "ber": 0.02}])
    plain = Chip.build(spec, m)
    chip = ProtectedChip(spec, plain.selection, plain.view.with_protected(protect_bits(plain, "ecc", 64, "random")),
                         plain.faults)
    nan = [bool(torch.isnan(chip.program(generator(0, t))).any()) for t in range(50)]
    assert any(nan) and not all(nan)


def test_ecc_silent_budget_is_the_exact_quantile():
    """One word: the distribution of silent data flips enumerated from the binomials directly."""
    p, cov = 0.03, 0.99
    pd, pc = stats.binom.pmf(np.arange(65), 64, p), stats.binom.pmf(np.arange(9), 8, p)
    pmf = np.zeros(65)
    for d in range(65):
        for c in range(9):
            pmf[d if d + c >= 3 else 0] += pd[d] * pc[c]
    want = int(np.nonzero(np.cumsum(pmf) >= cov)[0][0])
    assert ecc_silent_quantile(64, p, cov) == want
    # many words: against a simulation
    rng = np.random.default_rng(0)
    d, c = rng.binomial(64, p, (20000, 40)), rng.binomial(8, p, (20000, 40))
    s = np.where(d + c >= 3, d, 0).sum(1)
    q = ecc_silent_quantile(64 * 40, p, 0.9)
    assert abs(np.mean(s <= q) - 0.9) < 0.03 and np.mean(s <= q - 1) < 0.9


def test_covering_set_leaves_out_the_protected_bits():
    m, data = _tiny()
    for count in (None, 2):
        spec = _spec(faults=[{"kind": "bitflip", "ber": 0.02} if count is None else {"kind": "bitflip", "count": count}])
        plain = Chip.build(spec, m)
        g = ranking_gradient(plain, m, data)
        for scheme in ("tmr", "ecc"):
            pb = protect_bits(plain, scheme, 0.3, "ranked", grad=g)
            chip = ProtectedChip(spec, plain.selection, plain.view.with_protected(pb), plain.faults)
            cs = chip.constraint(0.99)
            parts = dict(zip(cs.names, cs.parts))
            main_, res = parts["bitflip"], parts["bitflip-protected"]
            mask = pb.mask()
            assert not main_.deltas[mask].any() and not res.deltas[~mask].any()
            total = plain.view.k * plain.view.bits
            c = 0.99 ** 0.5  # two random parts
            assert main_.n == (count if count else int(stats.binom.ppf(c, total - pb.n, 0.02)))
            assert res.n == pb.residual_budget(0.02 if count is None else count / total, c, counted=count is not None)
            if count is not None and scheme == "tmr":
                assert res.n == 0
            point = main_.maximize(torch.randn(plain.view.k, dtype=torch.float64))
            assert not _flipped_bits(chip.view, chip.view.w_q.double() + point)[mask].any()


def test_costs():
    pb = ProtectedBits("tmr", torch.tensor([3, 10, 11, 40]), nbits=8, total=64)
    c = pb.cost()
    assert c["redundancy_bits"] == 8 and c["extra_ops"] == 4
    r = int(math.floor(math.log2(41 / 4)))  # Rice parameter over the span of the positions
    gaps = [3, 6, 0, 28]
    assert rice_bits(pb.bits) == sum(r + 1 + (g >> r) for g in gaps)
    assert c["index_bits"] == min(64, rice_bits(pb.bits)) and c["cost_bits"] == 8 + c["index_bits"]
    e = ProtectedBits("ecc", torch.arange(130), nbits=8, total=10_000).cost()
    assert e["redundancy_bits"] == 3 * ECC_CHECK and e["words"] == 3 and e["extra_ops"] == 3


# ----------------------------------------------------------------------------- the spec and the command


def test_protection_in_a_spec_round_trips_and_builds():
    text = ('name = "p"\n[format]\nkind = "int8"\n[[faults]]\nkind = "bitflip"\nber = 0.01\n'
            '[[protection]]\nkind = "ecc"\nbudget = 100\nstrategy = "magnitude"\n')
    spec = parse_chip(text)
    assert parse_chip(spec.to_toml()) == spec and spec.protection[0].budget == 100
    m, data = _tiny()
    chip = Chip.build(spec, m)
    assert isinstance(chip, ProtectedChip) and chip.view.protected.n == 100
    assert "protection" not in parse_chip('name = "p"\n[format]\nkind = "int8"\n').to_dict()
    ranked = parse_chip(text.replace("magnitude", "ranked"))
    with pytest.raises(hw.HwfaultError, match="needs data to rank the bits on"):
        Chip.build(ranked, m)
    assert Chip.build(ranked, m, data=data).view.protected.n == 100


@pytest.mark.parametrize("args, msg", [
    (["--budget", "1.5"], "expected --budget as shares of the stored weight bits in (0, 1]"),
    (["--budget", "0"], "expected --budget as shares"),
    (["--budget", "-0.1"], "expected --budget as shares"),
    (["--budget", "0.01,x"], "got 'x'"),
    (["--budget", "10000000"], "budget of 10,000,000 bits: the chip stores only"),
    (["--budget", "0.01", "--strategies", "rank"], "unknown strategy 'rank' in --strategies (did you mean 'ranked'?)"),
    (["--budget", "0.01", "--scheme", "ecd"], "unknown --scheme 'ecd' (did you mean 'ecc'?)"),
    ([], "nothing to protect: give --budget"),
])
def test_bad_budgets_are_one_line_errors(args, msg, capsys):
    assert main(["protect", "-m", "digits-mlp", "-c", "int8-sram-0.5v", "--trials", "2", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err


@pytest.mark.parametrize("entry, msg", [
    ('kind = "rangr"', "protection[0].kind: unknown protection 'rangr' (did you mean 'ranger'?)"),
    ('kind = "ecc"\nbudget = 2.0', "protection[0].budget: expected a share of the stored weight bits in (0, 1]"),
    ('kind = "tmr"\nbudget = 0.1\nstrategy = "best"', "protection[0].strategy: expected 'ranked', 'random' or 'magnitude'"),
])
def test_unknown_protections_are_one_line_errors(tmp_path, entry, msg, capsys):
    f = tmp_path / "c.toml"
    f.write_text(f'name = "c"\n[format]\nkind = "int8"\n[[protection]]\n{entry}\n')
    assert main(["protect", "-m", "digits-mlp", "-c", str(f), "--budget", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_protect_writes_json_table_and_figure(tmp_path, capsys):
    j, p = tmp_path / "p.json", tmp_path / "p.png"
    assert main(["protect", "-m", "digits-cnn", "-c", "int8-sram-0.5v", "--budget", "0.005,0.5%,2000", "--trials", "3",
                 "--json", str(j), "--plot", str(p)]) == 0
    err = capsys.readouterr().err
    assert "tmr ranked" in err and "MC mean %" in err
    d = json.loads(j.read_text())
    rows = d["results"]
    assert [(r["strategy"], r["budget"]) for r in rows] == [("none", None)] + [
        (s, b) for b in (0.005, 0.005, 2000) for s in ("ranked", "random", "magnitude")]
    for r in rows:
        for key in ("strategy", "budget", "accuracy_mean", "worst_case_accuracy", "sdc_rate", "due_rate", "cost_bits"):
            assert key in r
        assert 0 <= r["sdc_rate"] <= 1 and 0 <= r["due_rate"] <= 1
    assert rows[0]["cost_bits"] == 0 and all(r["cost_bits"] > 0 for r in rows[1:])
    assert rows[-1]["budget_bits"] == 2000 and rows[1]["budget_bits"] == round(0.005 * d["stored_weight_bits"])
    assert p.stat().st_size > 10_000
