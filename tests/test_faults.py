"""Fault models: samplers match their statistical models, and constraint(coverage) covers them."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import hwfault as hw
from hwfault.faults import (Additive, BitFlip, Chip, Drift, Multiplicative, PCMProgramming, Quantization, ReadNoise,
                            StuckAt)
from hwfault.faults.base import DeviceView, sample_positions
from hwfault.formats import NumberFormat

N = 1000  # samples per statistical test


@pytest.fixture(scope="module")
def conv2():
    model = hw.load_model("digits-cnn")
    return hw.select(model, "conv2.weight,fc2.weight")


def view(sel, fmt="fp32", per_channel=False):
    return DeviceView.build(sel, NumberFormat.parse(fmt, per_channel=per_channel))


def gen(i):
    return torch.Generator().manual_seed(1000 + i)


@pytest.mark.parametrize("fault", [Additive(0.03), Multiplicative(0.05), PCMProgramming(), ReadNoise(0.02)])
def test_gaussian_moments_and_normality(conv2, fault):
    v = view(conv2)
    w = v.w_q.double()
    sigma = fault.sigmas(v, w)
    z = torch.cat([(fault.sample(v, w, gen(i)) - w) / sigma for i in range(20)])
    z = z[torch.isfinite(z)].numpy()
    assert abs(z.mean()) < 4 / math.sqrt(len(z))
    assert z.var() == pytest.approx(1.0, abs=0.02)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_pcm_noise_follows_the_conductance_polynomial(conv2):
    v = view(conv2)
    tmax = v.tmax.double()
    s0 = PCMProgramming().sigmas(v, torch.zeros_like(tmax)) / tmax
    s1 = PCMProgramming().sigmas(v, tmax) / tmax
    assert torch.allclose(s0, torch.full_like(s0, 0.26348 / 25))  # about 1% of g_max at g = 0
    assert torch.allclose(s1, torch.full_like(s1, (0.26348 + 1.9650 - 1.1731) / 25))  # about 4.2% at g_max


@pytest.mark.parametrize("fmt, ber", [("int8", 0.0023), ("fp32", 1e-4), ("fp16", 0.001)])
def test_bitflip_counts_are_binomial(conv2, fmt, ber):
    v = view(conv2, fmt)
    M = v.k * v.bits
    fault = BitFlip(ber)
    counts = []
    base = v.encode(v.w_q)
    for i in range(N):
        after = v.encode(fault.sample(v, v.w_q.double(), gen(i)).float())
        x = base ^ after
        counts.append(sum(int(((x >> b) & 1).sum()) for b in range(v.bits)))
    counts = np.asarray(counts)
    # chi-square goodness of fit against Binomial(M, ber), bins with expected count >= 5
    lo, hi = stats.binom.ppf([0.005, 0.995], M, ber).astype(int)
    edges = np.arange(lo, hi + 2)
    obs = np.array([(counts < lo).sum()] + [(counts == e).sum() for e in edges[:-1]] + [(counts > hi).sum()])
    exp = N * np.array([stats.binom.cdf(lo - 1, M, ber)] + list(stats.binom.pmf(edges[:-1], M, ber))
                       + [stats.binom.sf(hi, M, ber)])
    merged_o, merged_e, acc_o, acc_e = [], [], 0, 0.0
    for o, e in zip(obs, exp):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            merged_o.append(acc_o)
            merged_e.append(acc_e)
            acc_o, acc_e = 0, 0.0
    merged_o[-1] += acc_o
    merged_e[-1] += acc_e
    merged_e = np.asarray(merged_e) * (sum(merged_o) / sum(merged_e))
    assert stats.chisquare(merged_o, merged_e).pvalue > 1e-3


def test_sparse_positions_are_distinct_and_uniform():
    pos = torch.cat([sample_positions(1000, 0.01, gen(i)) for i in range(2000)])
    hist = np.bincount(pos.numpy(), minlength=1000)
    assert stats.chisquare(hist).pvalue > 1e-3
    one = sample_positions(10_000, 0.3, gen(0))
    assert one.unique().numel() == one.numel()


def test_stuck_at_weight_rates_and_values(conv2):
    v = view(conv2, "int4", per_channel=True)
    fault = StuckAt(sa0=0.0175, sa1=0.0904)
    w = v.w_q.double()
    zero = hit_max = total = 0
    for i in range(200):
        out = fault.sample(v, w, gen(i))
        changed = out != w
        total += int(changed.sum())
        zero += int((changed & (out == 0)).sum())
        hit_max += int((changed & (out.abs() == v.tmax.double())).sum())
    expected = 200 * v.k * (0.0175 + 0.0904)
    assert total == pytest.approx(expected, rel=0.05)  # cells already at the stuck value do not change
    assert hit_max / max(zero, 1) == pytest.approx(0.0904 / 0.0175, rel=0.2)


@pytest.mark.parametrize("make", [
    lambda: [Additive(0.03)], lambda: [Multiplicative(0.05)], lambda: [PCMProgramming()],
    lambda: [ReadNoise(0.02, "weight")], lambda: [Drift(86400.0)], lambda: [Drift(3600.0, compensation=False)],
    lambda: [BitFlip(0.0023)], lambda: [StuckAt(0.0175, 0.0904)], lambda: [StuckAt(0.01, 0.02, "bit")],
    lambda: [PCMProgramming(), Drift(86400.0), ReadNoise(0.01)],
], ids=["additive", "multiplicative", "pcm", "read", "drift", "drift-nocomp", "bitflip", "stuck", "stuck-bit",
        "pcm-stack"])
@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_constraint_covers_at_least_the_coverage(conv2, make, fmt):
    faults = make()
    if fmt == "fp32" and any(isinstance(f, (BitFlip, StuckAt)) and getattr(f, "granularity", "") == "bit" for f in faults):
        fmt = "int8"
    model_chip = Chip(spec=type("S", (), {"coverage": 0.999, "name": "t"})(), selection=conv2,
                      view=view(conv2, fmt, per_channel=True), faults=tuple(faults))
    for c in (0.999, 0.9):
        cset = model_chip.constraint(c)
        inside = sum(cset.contains_parts(model_chip.sample_parts(gen(i))) for i in range(N))
        assert inside / N >= c - 3 * math.sqrt(c * (1 - c) / N) - 1 / N, (c, inside)
    if all(isinstance(f, (Additive, Multiplicative, PCMProgramming, ReadNoise)) for f in faults):
        # the chi-square ellipsoid is tight: at coverage 0.9 about 10% of the chips fall outside
        assert inside / N <= 0.95


def test_quantization_box_holds_every_rounding(conv2):
    for fmt in ("int8", "int4", "fp16", "bf16"):
        v = view(conv2, fmt)
        box = Quantization().constraint(v, 0.999)
        assert box.contains(v.w_q.double() - v.w.double())
        assert not box.contains(1.5 * box.hi)


@pytest.mark.parametrize("fault", [Additive(0.03), ReadNoise(0.01, relative_to="weight"), BitFlip(0.01),
                                   StuckAt(0.02, 0.02), Drift(86400.0, compensation=False)])
def test_a_realisation_is_its_generator_read_as_documented(conv2, fault):
    """Each sampler, recomputed from its documented procedure on a generator seeded the same way: the
    realisation is a function of the generator alone (so a trial is reproducible from its seed), and it
    is the fault the docstring describes, not merely something that repeats."""
    from hwfault.formats import flip_bits

    v = view(conv2, "int8")
    w = v.w_q.double()
    got = fault.sample(v, w, torch.Generator().manual_seed(7))
    ref_gen = torch.Generator().manual_seed(7)
    if isinstance(fault, (Additive, ReadNoise)):        # w + sigma_i z_i, z ~ N(0, I) in generator order
        want = w + fault.sigmas(v, w) * torch.randn(v.k, generator=ref_gen, dtype=torch.float64)
    elif isinstance(fault, BitFlip):                     # Binomial(k bits, ber) sites, each stored bit XOR-ed
        pos = sample_positions(v.k * v.bits, fault.ber, ref_gen)
        codes = flip_bits(v.encode(w), pos // v.bits, pos % v.bits)
        want = v.decode(codes).double()
        assert 0.5 * v.k * v.bits * fault.ber < pos.numel() < 1.5 * v.k * v.bits * fault.ber
    elif isinstance(fault, StuckAt):                     # Binomial sites; SA1 with prob sa1/rate, sign equally likely
        pos = sample_positions(v.k, fault.rate, ref_gen)
        one = torch.rand(pos.numel(), generator=ref_gen, dtype=torch.float64) < fault.sa1 / fault.rate
        sign = torch.where(torch.rand(pos.numel(), generator=ref_gen) < 0.5, -1.0, 1.0).double()
        want = w.clone()
        want[pos] = torch.where(one, v.tmax.double()[pos] * sign, torch.zeros_like(sign))
    else:                                                # w (t/t0)^-nu, nu ~ N(nu_mean(g), nu_std(g)) clipped at 0
        mu, sd = fault._nu(v, w)
        nu = (mu + sd * torch.randn(v.k, generator=ref_gen, dtype=torch.float64)).clamp(min=0)
        want = w * (fault.t / fault.t0) ** (-nu)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    other = fault.sample(v, w, torch.Generator().manual_seed(8))
    assert not torch.equal(other, got)


def test_drift_compensation_removes_the_mean_decay(conv2):
    v = view(conv2)
    w = v.w_q.double()
    raw = Drift(86400.0, compensation=False).sample(v, w, gen(0))
    comp = Drift(86400.0).sample(v, w, gen(0))
    assert float(raw.abs().sum() / w.abs().sum()) < 0.8  # a day of PCM drift: conductances decay
    assert float(comp.abs().sum() / w.abs().sum()) == pytest.approx(1.0, abs=1e-9)


def test_chip_caches_offsets_and_stored_values(conv2):
    chip = Chip(spec=type("S", (), {"coverage": 0.999, "name": "t"})(), selection=conv2, view=view(conv2, "int8"),
                faults=())
    sizes = [p.numel() for p in conv2.params]
    offs = chip.offsets
    assert offs.tolist() == [0, sizes[0], sizes[0] + sizes[1]] and offs[-1] == chip.view.k
    assert chip.offsets is offs is chip.view.offsets  # computed once per view
    assert chip.stored.dtype == torch.float64 and torch.equal(chip.stored, chip.view.w_q.double())
    assert chip.stored is chip.view.stored and chip.with_faults([Additive(0.01)]).stored is chip.stored
    chip._offsets, chip._stored = offs, chip.stored  # what the campaign code sets on a chip today
    assert chip._offsets is offs
