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
from hwfault.analyses.estimate import WorstCase
from hwfault.analyses.protect import _pooled, protect
from hwfault.cli import main
from hwfault.faults import Chip
from hwfault.faults.protection import ProtectedChip, protect_bits, ranking_gradient
from hwfault.faults.protection.bits import ECC_CHECK, ProtectedBits, ecc_silent_quantile, rice_bits
from hwfault.rng import generator
from hwfault.search.results import evaluate_parts
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


def _int4_flip(view, el: int, bit: int) -> float:
    """By hand: the change of stored int4 weight ``el`` when its bit ``bit`` flips (two's complement
    codes, decoded with the tensor's scale)."""
    s = float(view.scale[el])
    code = int(round(float(view.w_q[el]) / s))
    u = (code & 0xF) ^ (1 << bit)
    return (u - 16 if u >= 8 else u) * s - float(view.w_q[el])


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
        for b in range(v.bits):
            gains.append((abs(float(g[i]) * _int4_flip(v, i, b)), i * v.bits + b))
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


def test_ranked_choice_with_a_worst_case_point_splits_the_budget_brute_force():
    """Given the gradient at a worst-case point, half the budget goes to the top bits by first-order
    damage at the stored weights and the other half to the top bits by the damage at that point,
    among the rest; each flip's damage computed by hand."""
    m, data = _tiny()
    chip = Chip.build(_spec(), m)
    v = chip.view
    g = ranking_gradient(chip, m, data)
    assert torch.equal(ranking_gradient(chip, m, data, at=chip.delta(v.w_q.double())), g)
    at = chip.delta(v.w_q.double()) + torch.linspace(-0.3, 0.3, v.k, dtype=torch.float64)
    ga = ranking_gradient(chip, m, data, at=at)
    i, h = int(ga.abs().argmax()), 1e-4  # the gradient at the point: a finite difference agrees
    loss = []
    for sgn in (1, -1):
        d = at.clone()
        d[i] += sgn * h
        with hw.perturbed(chip.selection, d):
            loss.append(hw.evaluate(m, data).loss)
    assert (loss[0] - loss[1]) / (2 * h) == pytest.approx(float(ga[i]), rel=2e-2)

    def top(grad, n, skip=()):
        gains = [(abs(float(grad[e]) * _int4_flip(v, e, b)), e * v.bits + b) for e in range(v.k) for b in range(v.bits)]
        return [pos for _, pos in sorted(gains, key=lambda t: (-t[0], t[1])) if pos not in skip][:n]

    for n in (1, 9, 40):
        first = top(g, n - round(0.5 * n))
        want = sorted(first + top(ga, n - len(first), set(first)))
        got = protect_bits(chip, "tmr", n, "ranked", grad=g, adversary=ga).bits.tolist()
        assert got == want, n
        assert len(set(got)) == n
    # random and magnitude do not look at it
    assert torch.equal(protect_bits(chip, "tmr", 9, "magnitude", adversary=ga).bits,
                       protect_bits(chip, "tmr", 9, "magnitude").bits)


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
            share = 0.01 / 100  # the residual's share of the fault's miss probability
            assert main_.n == (count if count else int(stats.binom.ppf(0.99 + share, total - pb.n, 0.02)))
            assert res.n == pb.residual_budget(0.02 if count is None else count / total, 1 - share,
                                               counted=count is not None)
            if count is not None and scheme == "tmr":
                assert res.n == 0
            if count is None and scheme == "tmr":  # a residual almost never there costs the other part nothing
                low = _spec(faults=[{"kind": "bitflip", "ber": 1e-7}])
                lp = Chip.build(low, m)
                lc = ProtectedChip(low, lp.selection, lp.view.with_protected(protect_bits(lp, "tmr", 0.3, "ranked", grad=g)),
                                   lp.faults).constraint(0.99)
                assert lc.parts[-1].n == 0 and lc.parts[-2].n <= lp.constraint(0.99).parts[-1].n
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


# ----------------------------------------------------------------------------- Ranger, clip-weights, checksums


class _Mixed(nn.Module):
    """Conv1d (grouped, strided), Conv2d and Linear layers on a 3-D input: every checksum geometry."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, stride=2, padding=1, groups=2)
        self.c2 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x))                      # (B, 8, 5)
        h = h + self.c2(h[:, None]).mean(1)             # (B, 8, 5)
        return self.head(torch.relu(self.fc(h.flatten(1))))


def _mixed():
    torch.manual_seed(1)
    m = _Mixed().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(64, 4, 10)
    return m, (x, torch.randint(0, 3, (64,)))


def _act_spec(protection, fmt="fp32", faults=None):
    return ChipSpec.model_validate({"schema_version": 1, "name": "a", "format": {"kind": fmt},
                                    "faults": faults if faults is not None else
                                    [{"kind": "activation-bitflip", "count": 2}], "protection": protection})


def _seen(model, chip, x, names, seed=0):
    """Each named layer's output as the rest of the model sees it (a hook registered after the chip's)."""
    got = {}
    mods = dict(model.named_modules())
    with torch.no_grad(), chip.forward_hooks(model, generator(seed, 0)):
        hs = [mods[n].register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, o.detach().clone())) for n in names]
        try:
            out = model(x)
        finally:
            for h in hs:
                h.remove()
    return got, out


def test_ranger_bounds_are_the_profiled_ranges_and_clip_after_the_faults(snapshot):
    m, (x, y) = _mixed()
    take, same = snapshot
    snap = take(m)
    chip = Chip.build(_act_spec([{"kind": "ranger", "inputs": 32}]), m, data=(x, y))
    ranger = chip.guards[0]
    idx = torch.linspace(0, 63, 32).round().long()
    want = {}
    hs = [mod.register_forward_hook(lambda mm, a, o, n=n: want.__setitem__(n, (float(o.min()), float(o.max()))))
          for n, mod in m.named_modules() if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        m(x[idx])
    for h in hs:
        h.remove()
    assert set(ranger.bounds) == set(want) and all(ranger.bounds[n] == pytest.approx(want[n]) for n in want)
    # fault-free on the profiled inputs: nothing is clipped
    clean = Chip.build(_act_spec([{"kind": "ranger", "inputs": 32}], faults=[]), m, data=(x, y))
    assert torch.equal(_seen(m, clean, x[idx], [])[1], m(x[idx]))
    # with flips (fp32 exponent flips reach 1e38): every struck output as the next layer sees it is in bounds
    for t in range(20):
        got, out = _seen(m, chip, x, list(ranger.bounds), seed=t)
        for n, (lo, hi) in ranger.bounds.items():
            assert float(got[n].min()) >= lo and float(got[n].max()) <= hi and torch.isfinite(got[n]).all()
    assert same(m, snap) and all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    from hwfault.faults.protection import Ranger

    v = torch.tensor([[-10.0, 0.5, float("nan"), 10.0, float("inf")]])
    assert Ranger({"fc": (-1.0, 1.0)}, "zero").apply("fc", v, None, {}, None).tolist() == [[0.0, 0.5, 0.0, 0.0, 0.0]]
    assert Ranger({"fc": (-1.0, 1.0)}, "clip").apply("fc", v, None, {}, None).tolist() == [[-1.0, 0.5, 0.0, 1.0, 1.0]]


def test_ranger_lowers_the_sdc_rate_of_fp32_activation_flips_on_the_zoo_cnn():
    from hwfault.analyses.protect import protect

    spec = ChipSpec.model_validate({"schema_version": 1, "name": "act", "format": {"kind": "fp32"},
                                    "faults": [{"kind": "activation-bitflip", "count": 1}],
                                    "protection": [{"kind": "ranger"}]})
    r = protect("digits-cnn", "digits", spec, budgets=[], trials=6, worst_case=False)
    none, ranger = r.row("none"), r.row("spec")
    assert none["sdc_rate"] > 0 and ranger["sdc_rate"] * 3 <= none["sdc_rate"]
    assert ranger["cost"][0]["kind"] == "ranger" and ranger["cost_bits"] == 64 * 4


@pytest.mark.parametrize("mode", ["clip", "zero"])
def test_the_activation_worst_case_with_ranger_ranks_flips_as_ranger_leaves_them_brute_force(mode):
    """One fp32 flip per input in the first layer, Ranger on both: every (neuron, bit) flip decoded by
    hand, bounded as Ranger bounds it (NaN reads 0), its first-order gain from the gradient at Ranger's
    output; the one-step choice is the argmax, and the worst point scores as the flip applied then
    bounded."""
    from hwfault.analyses.activation_worst import _bounds, _choose, budgets, one_step
    from hwfault.faults.models.activation import ActivationFormat
    from hwfault.tasks import current

    m, (x, y) = _tiny()
    prof = torch.randn(100, 6, generator=torch.Generator().manual_seed(5))  # not the scored inputs: no ties at a bound
    chip = Chip.build(_act_spec([{"kind": "ranger", "mode": mode}],
                                faults=[{"kind": "activation-bitflip", "count": 1, "params": ["0"]}]), m,
                      data=(prof, None))
    ranger = chip.guards[0]
    afmt = ActivationFormat("fp32")
    plan = budgets(chip, m, x[:1], 0.999)
    flips, _ = _choose(m, x, y, plan, afmt, current(), chip.guards, _bounds(chip.guards, afmt))

    def bound(name, v):
        lo, hi = ranger.bounds[name]
        if math.isnan(v):
            return 0.0
        if mode == "clip":
            return min(max(v, lo), hi)
        return 0.0 if v < lo or v > hi else v

    import struct

    worst_logits = []
    for i in range(len(x)):
        a = m[0](x[i:i + 1]).detach()
        post = torch.tensor([[bound("0", float(v)) for v in a[0]]], requires_grad=True)
        out = m[2](m[1](post))
        out_b = torch.stack([torch.stack([torch.tensor(bound("2", float(v))) for v in row]) for row in out.detach()])
        # the head's Ranger: the gradient passes where its outputs are inside their bounds
        lo2, hi2 = ranger.bounds["2"]
        inside = ((out >= lo2) & (out <= hi2)).detach()
        loss = nn.functional.cross_entropy(torch.where(inside, out, out_b), y[i:i + 1], reduction="sum")
        (g,) = torch.autograd.grad(loss, post)
        gains = {}
        for e in range(a.shape[1]):
            bits = struct.unpack("<I", struct.pack("<f", float(a[0, e])))[0]
            for b in range(32):
                new = struct.unpack("<f", struct.pack("<I", bits ^ (1 << b)))[0]
                gains[e * 32 + b] = float(g[0, e]) * (bound("0", new) - float(post[0, e].detach()))
        best = max(gains.values())
        mine = [int(p) - i * a.shape[1] * 32 for p in flips["0"] if i * a.shape[1] * 32 <= int(p) < (i + 1) * a.shape[1] * 32]
        if best > 1e-6:
            assert len(mine) == 1 and gains[mine[0]] >= best - 1e-6 * abs(best), (i, mine, best, gains.get(mine[0] if mine else -1))
            e, b = divmod(mine[0], 32)
            bits = struct.unpack("<I", struct.pack("<f", float(a[0, e])))[0]
            hit = post.detach().clone()
            hit[0, e] = bound("0", struct.unpack("<f", struct.pack("<I", bits ^ (1 << b)))[0])
            worst_logits.append(torch.tensor([bound("2", float(v)) for v in m[2](m[1](hit))[0]]))
        else:
            assert mine == []
            worst_logits.append(torch.tensor([bound("2", float(v)) for v in m[2](m[1](post.detach()))[0]]))
    r, n = one_step(chip, m, (x, y), 0.999, chip.guards)
    assert n == 1
    want = float((torch.stack(worst_logits).argmax(1) == y).float().mean())
    assert r.accuracy == pytest.approx(want)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_protect_reports_the_worst_case_with_and_without_ranger():
    """One fp32 flip per inference in the hidden layers of the zoo CNN: unprotected, one aimed flip
    makes a NaN of every input; Ranger bounds it, and its worst case stays below its Monte-Carlo."""
    from hwfault.analyses.protect import protect

    spec = ChipSpec.model_validate({"schema_version": 1, "name": "act", "format": {"kind": "fp32"},
                                    "faults": [{"kind": "activation-bitflip", "count": 1,
                                                "params": ["conv1", "conv2", "fc1"]}],
                                    "protection": [{"kind": "ranger"}]})
    r = protect("digits-cnn", "digits", spec, budgets=[], trials=3)
    none, ranger = r.row("none"), r.row("spec")
    assert none["worst_case_accuracy"] == 0.0 and none["worst_case"]["one_step"] == 0.0
    assert 0.5 < ranger["worst_case_accuracy"] <= ranger["accuracy_min"]


def test_protect_names_the_faults_the_bits_redundancy_does_not_act_on():
    """ECC/TMR act on flips of stored element bits; a chip's other faults (stuck cells, scale bits)
    are named in the result and in the table's caption, not silently treated as protected."""
    from hwfault.analyses.protect import protect
    from hwfault.report.protect import protect_table

    m, data = _tiny()
    spec = _spec(faults=[{"kind": "bitflip", "ber": 0.01},
                         {"kind": "stuck", "sa0": 0.01, "sa1": 0.0, "granularity": "bit"}])
    r = protect(m, data, spec, budgets=[0.1], strategies=["random"], trials=2, worst_case=False).to_dict()
    assert r["not_protected"] == ["stuck"]
    assert "do not act on this chip's stuck faults" in protect_table(r).caption
    plain = protect(m, data, _spec(), budgets=[0.1], strategies=["random"], trials=2, worst_case=False).to_dict()
    assert plain["not_protected"] == [] and "do not act" not in protect_table(plain).caption


def test_clip_weights_bounds_every_read_and_the_covering_set():
    m, data = _tiny()
    spec = _spec(fmt="fp32", faults=[{"kind": "bitflip", "ber": 0.05}], protection=[{"kind": "clip-weights"}])
    chip = Chip.build(spec, m)
    v, b = chip.view, chip.bounds
    seg = v.segment_of()
    for i, p in enumerate(chip.selection.params):
        assert float(b.lo[seg == i].min()) == float(p.min()) and float(b.hi[seg == i].max()) == float(p.max())
    for t in range(20):
        values = chip.program(generator(0, t))
        assert torch.isfinite(values).all() and (values >= b.lo).all() and (values <= b.hi).all()
        idx, new = chip.program_sparse(generator(0, t))
        assert torch.equal(new, values[idx]) and idx.numel() == int((values != v.w_q.double()).sum())
    bits = next(p for n, p in zip(chip.constraint(0.99).names, chip.constraint(0.99).parts) if n == "bitflip")
    after = v.w_q.double()[:, None] + bits.deltas.double()
    assert torch.isfinite(after).all() and (after >= b.lo[:, None] - 1e-12).all() and (after <= b.hi[:, None] + 1e-12).all()
    plain = Chip.build(_spec(fmt="fp32", faults=[{"kind": "bitflip", "ber": 0.05}]), m)
    assert float(plain.constraint(0.99).parts[0].deltas.abs().max()) > 1e30  # the exponent flips it removes


def test_checksums_flag_faulty_weights_and_outputs_and_nothing_else():
    m, (x, y) = _mixed()
    spec = _act_spec([{"kind": "checksum", "rtol": 1e-4}], faults=[])
    chip = Chip.build(spec, m)
    ck = chip.guards[0]
    assert set(ck.sums) == {"c1", "c2", "fc", "head"}
    _, out = _seen(m, chip, x, [])
    assert torch.isfinite(out).all()  # fault-free: no flag
    # the checksum identity against the layer's own channels, at the fault-free weights
    got = {}
    hs = [dict(m.named_modules())[n].register_forward_hook(lambda mm, a, o, n=n: got.__setitem__(n, (a[0], o)))
          for n in ck.sums]
    with torch.no_grad():
        m(x)
    for h in hs:
        h.remove()
    for n, (inp, o) in got.items():
        assert not ck.flagged(n, inp, o).any()
        bumped = o.clone()
        bumped[3].view(-1)[1] += 1.0  # one output of input 3
        assert ck.flagged(n, inp, bumped).tolist() == [i == 3 for i in range(len(x))]
    # a faulty weight: the inputs whose outputs it changes are flagged, and read NaN
    with torch.no_grad():
        m.c1.weight[5, 0, 1] += 0.5
    try:
        _, faulty = _seen(m, chip, x, [])
        assert torch.isnan(faulty).all(1).all()  # every input meets that weight
    finally:
        with torch.no_grad():
            m.c1.weight[5, 0, 1] -= 0.5
    # activation flips: flagged inputs read NaN also with Ranger after the checksums
    both = Chip.build(_act_spec([{"kind": "checksum", "rtol": 1e-4}, {"kind": "ranger"}]), m, data=(x, y))
    assert [type(g).__name__ for g in both.guards] == ["Checksum", "Ranger"]
    _, out = _seen(m, both, x, [], seed=3)
    assert (~torch.isfinite(out).all(1)).sum() >= 1


def test_checksum_detection_in_protect():
    from hwfault.analyses.protect import protect

    spec = ChipSpec.model_validate({"schema_version": 1, "name": "act", "format": {"kind": "fp32"},
                                    "faults": [{"kind": "activation-bitflip", "count": 1}],
                                    "protection": [{"kind": "checksum"}]})
    r = protect("digits-cnn", "digits", spec, budgets=[], trials=4, worst_case=False)
    none, ck = r.row("none"), r.row("spec")
    assert ck["detection_rate"] == 1.0 and ck["false_positive_rate"] == 0.0 and ck["sdc_rate"] == 0.0
    assert ck["due_rate"] > none["due_rate"] and 0 < ck["benign_flag_rate"] < 1
    c = ck["cost"][0]
    assert c["kind"] == "checksum" and 0 < c["extra_ops_share"] < 0.5
    # storage: one summed kernel and bias per layer (conv1, conv2, fc1, fc2 of digits-cnn), float32
    m = hw.load_model("digits-cnn")
    assert c["cost_bits"] == 32 * sum(mod.weight[0].numel() + 1 for mod in m.modules()
                                      if isinstance(mod, (nn.Conv2d, nn.Linear)))


def test_a_faulty_copy_and_a_realised_model_carry_the_guards():
    m, (x, y) = _mixed()
    spec = _act_spec([{"kind": "ranger"}], faults=[{"kind": "activation-bitflip", "count": 3}])
    chip = Chip.build(spec, m, data=(x, y))
    lo, hi = chip.guards[0].bounds["head"]
    twin = hw.faulty_copy(m, chip, seed=0, trial=1)
    with torch.no_grad():
        out = twin(x)
    assert float(out.min()) >= lo and float(out.max()) <= hi
    with hw.realised(m, chip, seed=0, trial=1) as rm, torch.no_grad():
        assert torch.equal(rm(x), out)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_a_spec_with_protections_is_read_without_torch(tmp_path):
    """``hwfault chips show/check`` of a spec with [[protection]] stays on the torch-free side."""
    import subprocess
    import sys

    f = tmp_path / "c.toml"
    f.write_text('name = "c"\n[format]\nkind = "int8"\n[[faults]]\nkind = "bitflip"\nber = 0.01\n'
                 '[[protection]]\nkind = "tmr"\nbudget = 0.005\n[[protection]]\nkind = "checksum"\n')
    code = ("import sys\nfrom hwfault.cli import main\nrc = main(['chips', 'show', sys.argv[1]])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules), rc)")
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in r.stdout, r.stdout + r.stderr
    assert "tmr: 0.5% of the stored weight bits, chosen ranked (three copies, majority vote)" in r.stdout
    assert "checksum: column checksums on conv, linear outputs" in r.stdout

# ----------------------------------------------------------------------------- worst cases pooled across rows
# A point found for one row, with the flips of the bits another row protects taken out, is a point of
# that row's covering set, and replaces that row's own when it scores lower; so no row reads better
# than a row whose set holds its set.


def test_a_pooled_point_drops_the_protected_flips_and_lies_in_the_set():
    m, data = _tiny()
    base = Chip.build(_spec(), m)
    v = base.view
    flips = [(3, 3), (10, 2), (17, 3)]  # (weight, bit): the second is protected below
    pb = ProtectedBits("tmr", torch.tensor([10 * v.bits + 2, 40 * v.bits + 1]), nbits=v.bits, total=v.k * v.bits)
    prot = ProtectedChip(base.spec, base.selection, v.with_protected(pb), base.faults)
    names = base.constraint(0.99).names
    box = torch.linspace(-1, 1, v.k, dtype=torch.float64) * (v.w_q.double() - v.w.double()).abs()
    flat = torch.zeros(v.k, dtype=torch.float64)
    for e, b in flips:
        flat[e] = _int4_flip(v, e, b)
    parts = [box if n == "quantization" else flat for n in names]
    assert base.constraint(0.99).contains_parts(parts)
    r = evaluate_parts(m, data, base.selection, parts)
    w = WorstCase("multi_step", r.accuracy, r.loss, 0.0, tuple(parts), {})
    zero = [torch.zeros(v.k, dtype=torch.float64)] * len(prot.constraint(0.99).names)
    r0 = evaluate_parts(m, data, base.selection, zero)
    w0 = WorstCase("one_step", r0.accuracy, r0.loss, 0.0, tuple(zero), {})

    got = _pooled([base, prot], [[("multi_step", w)], [("one_step", w0)]], m, data, 0.99)
    # the protected row: the same box, the two unprotected flips, evaluated by hand
    kept = flat.clone()
    kept[10] = 0.0
    with hw.perturbed(base.selection, box + kept):
        acc = hw.evaluate(m, data).accuracy
    assert got[1][0] == pytest.approx(acc)
    assert got[1][1] == {"row": 0, "method": "multi_step", "dropped_flips": 1}
    # the unprotected row is offered the protected row's point unchanged (nothing to drop)
    assert got[0] == (r0.accuracy, {"row": 1, "method": "one_step", "dropped_flips": 0})


def test_a_point_outside_the_set_is_not_pooled():
    """A point with more flips than the other row's budget is refused by that row's set."""
    m, data = _tiny()
    wide, narrow = Chip.build(_spec(faults=[{"kind": "bitflip", "ber": 0.05}]), m), Chip.build(_spec(faults=[{"kind": "bitflip", "ber": 1e-4}]), m)
    v = wide.view
    n_narrow = narrow.constraint(0.99).parts[-1].n
    flat = torch.zeros(v.k, dtype=torch.float64)
    for e in range(n_narrow + 2):
        flat[e] = _int4_flip(v, e, 3)
    parts = [torch.zeros(v.k, dtype=torch.float64) if n == "quantization" else flat for n in wide.constraint(0.99).names]
    assert wide.constraint(0.99).contains_parts(parts)
    r = evaluate_parts(m, data, wide.selection, parts)
    w = WorstCase("bit_search", r.accuracy, r.loss, 0.0, tuple(parts), {})
    zero = tuple(torch.zeros(v.k, dtype=torch.float64) for _ in parts)
    w0 = WorstCase("one_step", 1.0, 0.0, 0.0, zero, {})
    got = _pooled([wide, narrow], [[("bit_search", w)], [("one_step", w0)]], m, data, 0.99)
    assert got[1] is None  # the wide row's point has more flips than the narrow set's budget
    assert got[0] == (1.0, {"row": 1, "method": "one_step", "dropped_flips": 0})


def test_protect_rows_never_read_better_than_a_row_whose_set_holds_them():
    """At a low rate (no TMR residual), the unprotected chip's set holds every protected chip's, and a
    strategy's 2% choice holds its 0.5% choice (the top bits of the same scores): the worst cases
    follow, and a pooled value names its source row."""
    m, data = _tiny()
    r = protect(m, data, _spec(faults=[{"kind": "bitflip", "ber": 2e-4}]), budgets=[0.05, 0.2], trials=2, seed=0, rank_data=data).to_dict()
    rows = r["results"]
    none = rows[0]
    assert none["strategy"] == "none"
    for row in rows[1:]:
        assert row["worst_case"]["budgets"]["bitflip-protected"] == 0
        assert none["worst_case_accuracy"] <= row["worst_case_accuracy"]
        if "pooled" in row["worst_case"]:
            p = row["worst_case"]["pooled"]
            assert p["accuracy"] == row["worst_case_accuracy"] <= min(row["worst_case"][k] for k in
                                                                      ("one_step", "multi_step", "bit_search"))
            assert p["from"]["strategy"] in ("none", "ranked", "random", "magnitude")
    for s in ("ranked", "random", "magnitude"):
        lo, hi = (next(x for x in rows if x["strategy"] == s and x["budget"] == b) for b in (0.05, 0.2))
        assert lo["worst_case_accuracy"] <= hi["worst_case_accuracy"]
    assert r["search"]["pooled"] is True
