"""Block formats (hwfault.blockformats) bit-exact against independent references: ml_dtypes for the
element types, and small numpy implementations of the OCP MX, NVFP4 and group-int rules here."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from hwfault.blockformats import E2M1, E2M3, E3M2, E4M3, E5M2, BlockFormat, encode, parse
from hwfault.errors import SpecError

REF = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "e2m3": ml_dtypes.float6_e2m3fn,
       "e3m2": ml_dtypes.float6_e3m2fn, "e2m1": ml_dtypes.float4_e2m1fn}
TYPES = [E4M3, E5M2, E2M3, E3M2, E2M1]
MX = {"mxfp8_e4m3": ("e4m3", 8), "mxfp8_e5m2": ("e5m2", 15), "mxfp6_e2m3": ("e2m3", 2), "mxfp6_e3m2": ("e3m2", 4),
      "mxfp4": ("e2m1", 2)}
MAX = {"e4m3": 448.0, "e5m2": 57344.0, "e2m3": 7.5, "e3m2": 28.0, "e2m1": 6.0}


def _ref_codes(name: str, v: np.ndarray) -> np.ndarray:
    """ml_dtypes' round-to-nearest-even cast, after saturating at the largest normal."""
    return np.clip(v, -MAX[name], MAX[name]).astype(REF[name]).view(np.uint8).astype(np.int64)


def _hard_values(t, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Random values over the whole range, zeros, subnormals, exact ties between neighbours and values
    beyond the range."""
    rng = np.random.default_rng(seed)
    table = np.arange(1 << t.bits, dtype=np.uint8).view(REF[t.name]).astype(np.float64)
    fin = np.unique(table[np.isfinite(table)])
    ties = (fin[1:] + fin[:-1]) / 2
    sub = fin[(np.abs(fin) > 0) & (np.abs(fin) < 2.0 ** (1 - t.bias))]
    wide = rng.standard_normal(n) * np.exp(rng.uniform(-12, 12, n)) * MAX[t.name] / 100
    return np.concatenate([wide, ties, sub, sub / 3, [0.0, -0.0, MAX[t.name] * 1.01, -MAX[t.name] * 7, 1e30]])


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_element_codes_decode_and_encode_as_ml_dtypes_does(t):
    codes = np.arange(1 << t.bits, dtype=np.uint8)
    want = codes.view(REF[t.name]).astype(np.float64)
    got = t.decode(torch.from_numpy(codes.astype(np.int64))).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
    v = _hard_values(t)
    got = t.encode(torch.from_numpy(v)).numpy()
    assert np.array_equal(got, _ref_codes(t.name, v))


def _ref_mx(w: np.ndarray, kind: str) -> np.ndarray:
    """The OCP MX rule written out per block of 32 along each row: X = 2^(floor(log2 amax) - emax),
    elements cast with saturation; returns the decoded values."""
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    out = np.zeros_like(rows)
    for r in range(rows.shape[0]):
        for b in range(0, rows.shape[1], 32):
            v = rows[r, b:b + 32]
            amax = np.abs(v).max()
            if amax == 0:
                continue
            if kind == "mxint8":
                x = 2.0 ** math.floor(math.log2(amax))
                out[r, b:b + 32] = np.clip(np.round(v / x * 64), -127, 127) / 64 * x
                continue
            name, emax = MX[kind]
            x = 2.0 ** (math.floor(math.log2(amax)) - emax)
            out[r, b:b + 32] = np.clip(v / x, -MAX[name], MAX[name]).astype(REF[name]).astype(np.float64) * x
    return out.reshape(w.shape)


def _weights(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 2)
    w.view(-1)[::17] = 0.0
    w[0] = 0.0  # an all-zero row: its blocks get scale code 0 and decode to zeros
    return w


@pytest.mark.parametrize("kind", [*MX, "mxint8"])
@pytest.mark.parametrize("shape", [(6, 70), (4, 5, 3, 3)])  # K = 70 and 45: the last block of a row is short
def test_mx_blocks_follow_the_ocp_rule(kind, shape):
    w = _weights(shape)
    b = encode(w, BlockFormat(kind))
    assert b.scales.shape == (shape[0], -(-math.prod(shape[1:]) // 32)) and int(b.scales[0].max()) == 0
    assert np.array_equal(b.decode().numpy(), _ref_mx(w.numpy(), kind))


def test_nvfp4_follows_the_published_recipe():
    w = _weights((5, 40), seed=2)
    b = encode(w, BlockFormat("nvfp4"))
    rows = w.numpy().astype(np.float64)
    ts = float(np.float32(np.abs(rows).max() / (6 * 448)))
    want = np.zeros_like(rows)
    for r in range(rows.shape[0]):
        for s in range(0, rows.shape[1], 16):
            v = rows[r, s:s + 16]
            scale = float(np.clip(np.abs(v).max() / 6 / ts, 0, 448).astype(ml_dtypes.float8_e4m3fn))
            if scale > 0:
                want[r, s:s + 16] = np.clip(v / (scale * ts), -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float64) * scale * ts
    assert b.tensor_scale == ts and np.array_equal(b.decode().numpy(), want)


@pytest.mark.parametrize("bits, group", [(4, 32), (8, 128), (3, 7)])
def test_group_int_codes_round_half_to_even_with_an_fp16_scale_per_group(bits, group):
    w = _weights((3, 300), seed=3)
    qmax = (1 << (bits - 1)) - 1
    w[2, :group] = 0.0
    w[2, :5] = torch.tensor([float(qmax), 0.5, 1.5, 2.5, -3.5])  # scale 1: exact ties (and a clamp at 3 bits)
    b = encode(w, parse(f"int{bits}", group))
    rows = w.numpy().astype(np.float64)
    want = np.zeros_like(rows)
    for r in range(rows.shape[0]):
        for s in range(0, rows.shape[1], group):
            v = rows[r, s:s + group]
            sc = float(np.float16(np.abs(v).max() / qmax))
            want[r, s:s + group] = np.clip(np.round(v / sc), -qmax, qmax) * sc if sc else 0.0
    assert np.array_equal(b.decode().numpy(), want)


@pytest.mark.parametrize("kind", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_has_one_fp32_scale_per_tensor(kind):
    w = _weights((8, 9), seed=4)
    b = encode(w, BlockFormat(kind))
    name = kind[4:]
    s = float(np.float32(np.abs(w.numpy()).max() / MAX[name]))
    want = np.clip(w.numpy() / s, -MAX[name], MAX[name]).astype(REF[name]).astype(np.float64) * s
    assert b.scales.shape == (1, 1) and np.array_equal(b.decode().numpy(), want)


@pytest.mark.parametrize("kind", ["mxfp4", "mxfp8_e4m3", "mxint8"])
def test_a_flip_in_a_shared_scale_scales_exactly_its_block(kind):
    w = _weights((3, 96), seed=5)
    b = encode(w, BlockFormat(kind))
    before = b.decode()
    r, blk = 1, 2
    code = int(b.scales[r, blk])
    for bit in range(8):
        s = b.scales.clone()
        s[r, blk] = code ^ (1 << bit)
        after = b.with_scales(s).decode()
        other = torch.ones_like(after, dtype=torch.bool)
        other[r, blk * 32:(blk + 1) * 32] = False
        assert torch.equal(after[other], before[other])
        if s[r, blk] == 0xFF:
            assert bool(after[r, blk * 32:(blk + 1) * 32].isnan().all())
        else:
            factor = 2.0 ** (int(s[r, blk]) - code)  # 2^(+-2^bit)
            assert abs(math.log2(factor)) == 2 ** bit
            assert torch.equal(after[r, blk * 32:(blk + 1) * 32], before[r, blk * 32:(blk + 1) * 32] * factor)


@pytest.mark.parametrize("bad, needle", [(lambda: BlockFormat("mxfp5"), "did you mean 'mxfp4'"),
                                         (lambda: parse("int4"), "group_size"),
                                         (lambda: parse("int4", 0), "group_size >= 1"),
                                         (lambda: BlockFormat("int", 20, 32), "2 to 16 bits")])
def test_bad_block_formats_name_the_field(bad, needle):
    with pytest.raises(SpecError, match=needle):
        bad()


# ----------------------------------------------------------------------------- on a chip

KINDS = [{"kind": k} for k in ("fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8",
                               "nvfp4")] + [{"kind": "int4", "scale": "per-group", "group_size": 32}]


def _chip(fmt: dict, faults=()):
    from hwfault.faults import Chip
    from hwfault.inputs import load_model
    from hwfault.spec import ChipSpec

    spec = ChipSpec.model_validate({"schema_version": 1, "name": "t", "format": fmt, "faults": list(faults)})
    return Chip.build(spec, load_model("digits-cnn")), spec


@pytest.mark.parametrize("fmt", KINDS, ids=lambda f: f["kind"])
def test_a_chip_stores_every_tensor_in_the_format_and_its_box_holds_the_rounding(fmt):
    chip, spec = _chip(fmt)
    v = chip.view
    block = parse(fmt["kind"], fmt.get("group_size"))
    want = torch.cat([encode(p.detach(), block).decode().reshape(-1) for p in chip.selection.params])
    if block.kind == "nvfp4":  # (a chip reads each element with the fp32 product of its two scales)
        assert torch.allclose(v.w_q.double(), want, rtol=1e-6, atol=0)
    else:
        assert torch.equal(v.w_q.double(), want.float().double())
    assert torch.equal(v.decode(v.encode(v.w_q)), v.w_q)  # the stored values are fixed points of the format
    assert bool(((v.w_q - v.w).abs() <= v.step() / 2).all())
    from hwfault.spec import parse_chip

    assert parse_chip(spec.to_toml()) == spec


@pytest.mark.parametrize("fmt", [KINDS[2], KINDS[5], KINDS[6], KINDS[-1]], ids=lambda f: f["kind"])
def test_a_single_element_bit_flip_changes_one_bit_of_one_element(fmt):
    chip, _ = _chip(fmt, [{"kind": "bitflip", "count": 1}])
    v = chip.view
    for seed in range(20):
        sparse = chip.program_sparse(torch.Generator().manual_seed(seed))
        if sparse is None or sparse[0].numel() == 0:
            continue
        idx, new = sparse
        old_codes = v.encode_at(idx, v.w_q[idx].double())
        new_codes = v.encode_at(idx, new) if bool(torch.isfinite(new).all()) else None
        if new_codes is None:
            continue
        x = int((old_codes ^ new_codes)[0])
        assert x and x & (x - 1) == 0 and x < 1 << v.bits  # exactly one bit of the element's code
        assert torch.equal(v.decode_at(idx, new_codes).double(), new)


def test_a_campaign_on_an_mxfp4_chip_has_the_rows_of_plain_recomputation():
    from hwfault.analyses.campaign.plan import make_plan
    from hwfault.analyses.campaign.run import Recipe, context, run_campaign

    chip, spec = _chip({"kind": "mxfp4"}, [{"kind": "bitflip", "count": 2}])
    rec = Recipe("digits-cnn", "digits", spec.to_dict(), 1)
    plan = make_plan(chip, trials=40)
    cached = run_campaign(rec, plan).rows
    ctx = context(rec)
    ctx.cache = None
    plain = run_campaign(rec, plan).rows
    assert [(a["faults"], a["accuracy"], a["sdc"], a["due"]) for a in cached] == \
        [(b["faults"], b["accuracy"], b["sdc"], b["due"]) for b in plain]
    assert sum(r["sdc"] for r in plain) > 0


@pytest.mark.parametrize("kind", ["mxfp4", "mxint8", "nvfp4", "fp8_e4m3"])
def test_a_scale_flip_on_a_chip_rescales_exactly_its_block(kind):
    chip, _ = _chip({"kind": kind}, [{"kind": "bitflip", "count": 1, "target": "scales"}])
    v, sites = chip.view, chip.view.scale_sites
    assert sites.bits == 8 if kind != "fp8_e4m3" else sites.bits == 32
    seen = 0
    for seed in range(30):
        idx, new = chip.program_sparse(torch.Generator().manual_seed(seed))
        if idx.numel() == 0:
            continue  # a flip that leaves every element of an all-zero block at zero
        site = int(torch.searchsorted(sites.start, idx[0], right=True)) - 1
        block = torch.arange(int(sites.start[site]), int(sites.stop[site]))
        assert bool(torch.isin(idx, block).all())  # only that block's elements
        old = v.w_q[idx].double()
        codes = v.encode_at(idx, old)
        ratio = new[old != 0] / old[old != 0]
        if bool(torch.isnan(new).any()):
            assert bool(torch.isnan(new).all())  # the NaN scale code: the whole block
        elif ratio.numel():
            # one factor for the whole block (exact for the powers of two of MX; fp32 products round)
            assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=0 if kind.startswith("mx") else 1e-6, atol=0)
            assert torch.equal(v.encode_at(idx, old), codes)  # element codes kept
        seen += 1
    assert seen > 10


def test_sampled_flip_counts_follow_the_binomial_over_element_and_scale_bits_separately():
    from scipy import stats

    chip, _ = _chip({"kind": "mxfp4"}, [{"kind": "bitflip", "ber": 2e-4, "target": "both", "scale_ber": 5e-3}])
    v, sites, f = chip.view, chip.view.scale_sites, chip.faults[0]
    n_el, n_sc = v.k * v.bits, sites.count * sites.bits
    from hwfault.faults.base import sample_positions

    el, sc = [], []
    for seed in range(400):
        g = torch.Generator().manual_seed(seed)
        a = sample_positions(n_el, f.ber, g)
        b = sample_positions(n_sc, f.scale_ber, g)
        el.append(a.numel())
        sc.append(b.numel())
        # the fault draws exactly these positions from the same generator
        g2 = torch.Generator().manual_seed(seed)
        idx, _ = f.sample_at(v, g2)
        touched = set((a // v.bits).tolist()) | set(sites.elements(torch.unique(b // sites.bits))[0].tolist())
        assert set(idx.tolist()) <= touched
    for counts, n, p in ((el, n_el, f.ber), (sc, n_sc, f.scale_ber)):
        hist = np.bincount(counts)
        lo, hi = int(stats.binom.ppf(0.01, n, p)), int(stats.binom.ppf(0.99, n, p))
        obs = [sum(hist[:lo + 1])] + list(hist[lo + 1:hi]) + [sum(hist[hi:])]
        exp = [stats.binom.cdf(lo, n, p)] + [stats.binom.pmf(x, n, p) for x in range(lo + 1, hi)] + [stats.binom.sf(hi - 1, n, p)]
        exp = np.array(exp) * len(counts)
        assert stats.chisquare(obs, exp / exp.sum() * sum(obs)).pvalue > 1e-3


def _tiny_scale_set(n=2):
    from hwfault.constraints import BlockScaleSet

    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, generator=g, dtype=torch.float64)
    site = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, -1])
    factors = torch.tensor([[1.0, -0.5, 3.0], [-0.75, 1.0, float("nan")], [0.5, -0.5, 15.0], [2.0, -0.9, 1.0]],
                           dtype=torch.float64)
    return BlockScaleSet(base, site, factors, n)


def _all_points(s):
    import itertools

    pts = [torch.zeros(10, dtype=torch.float64)]  # (a NaN candidate is left to Monte-Carlo: it counts as no change)
    for r in range(1, s.n + 1):
        for sites in itertools.combinations(range(4), r):
            for js in itertools.product(range(3), repeat=r):
                pts.append(s._point(torch.tensor(sites), torch.tensor(js)))
    return pts


def test_the_scale_set_maximises_exactly_and_projects_to_its_nearest_point():
    s = _tiny_scale_set()
    pts = _all_points(s)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        grad = torch.randn(10, generator=g, dtype=torch.float64)
        best = max(float(p @ grad) for p in pts)
        got = s.maximize(grad)
        assert s.contains(got) and float(got @ grad) == pytest.approx(best, abs=1e-12)
        a = torch.randn(10, generator=g, dtype=torch.float64)
        a[9] = 0.0
        near = min(float((p - a).norm()) for p in pts)
        proj = s.project(a)
        assert s.contains(proj) and float((proj - a).norm()) == pytest.approx(near, abs=1e-12)
    assert s.contains(s.random(10, torch.Generator().manual_seed(2), torch.float64))
    three = s._point(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    assert not s.contains(three)  # three sites when n = 2
    off = s._point(torch.tensor([0]), torch.tensor([0]))
    off[0] *= 1.5
    assert not s.contains(off)  # not one factor for the whole block


@pytest.mark.parametrize("target", ["scales", "both"])
def test_the_estimate_bracket_holds_for_scale_faults(target, digits):
    from hwfault.analyses.estimate import estimate

    _, spec = _chip({"kind": "mxfp4"}, [{"kind": "bitflip", "ber": 2e-3, "target": target}])
    from hwfault.inputs import load_model

    r = estimate(load_model("digits-cnn"), digits, spec, trials=12, seed=0, steps=5, per_fault=False,
                 severities=()).to_dict()
    wc, mc = r["worst_case"], r["random"]
    assert wc["multi_step"]["accuracy"] <= wc["one_step"]["accuracy"] + 0.02
    assert wc["one_step"]["accuracy"] <= mc["accuracy_min"] + 0.02
    assert mc["accuracy_mean"] <= r["clean"]["accuracy"] + 0.02


def test_any_format_by_name_and_a_bad_one_in_one_line(capsys):
    from hwfault.blockformats import StoredBlockFormat, number_format
    from hwfault.cli import main
    from hwfault.formats import NumberFormat

    assert isinstance(number_format("mxfp4"), StoredBlockFormat) and number_format("mxfp4").bits == 4
    assert number_format("int4", group=64).block.group == 64
    assert isinstance(number_format("fp16"), NumberFormat) and number_format("int8", per_channel=True).per_channel
    with pytest.raises(SpecError, match="did you mean 'mxfp4'"):
        number_format("mxfp5")
    code = main(["bits", "--model", "digits-cnn", "--format", "nvfp5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "nvfp4" in err and len(err.splitlines()) == 1


def test_scale_faults_on_a_format_without_scales_are_refused_in_one_line():
    from hwfault.errors import HwfaultError
    from hwfault.faults.models.bitflip import BitFlip

    chip, _ = _chip({"kind": "int8"})
    with pytest.raises(HwfaultError, match="int8 stores no shared scales"):
        BitFlip(ber=1e-3, target="scales").sample_at(chip.view, torch.Generator().manual_seed(0))
