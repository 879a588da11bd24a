"""The analog periphery (aihwkit's IO-managed forward pass) against an independent numpy implementation
of the same equations, written one input vector at a time as aihwkit's C++ tiles run them: bit for
bit with the noise off (DAC, ADC, saturation, bound management, IR drop, tiles, weight mapping), and
the mean and standard deviation of the output error over many draws with the noise on (tolerances
that a wrong noise scale or a missing DAC fail, checked here too). Hooks gone after a block that
raises, draws a pure function of the seed, one-line spec errors, the preset in ``hwfault estimate``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hwfault as hw
from hwfault.cli import main
from hwfault.errors import HwfaultError
from hwfault.faults.models.activation import ActivationFormat, installed
from hwfault.faults.models.periphery import Periphery
from hwfault.faults.registry import build_fault

pytestmark = pytest.mark.usefixtures("one_thread")
F32 = np.float32
IDEAL = dict(out_noise=0.0)


# ----------------------------------------------------------------------------- the numpy reference


def _step(res, span):
    r = F32(res)
    if r <= 0:
        return F32(0)
    return (F32(1) / r if r > 1 else r) * F32(span)


def _splits(size, most):
    if most <= 0 or size <= most:
        return [size]
    n = -(-size // most)
    return [size // n + (i < size % n) for i in range(n)]


def ref_vector(p, x, w, rng):
    """One input vector x (n,) through one tile w (m, n), float32, as forwardVector in aihwkit's
    rpu_forward_backward_pass.cpp: noise management, bound-management rounds, DAC, MVM, IR drop,
    output noise, ADC, bound test and clip; read back by 1 / scale."""
    x, w = x.astype(F32), w.astype(F32)
    n = x.size
    d_in, d_out = _step(p.inp_res, 2.0), _step(p.out_res, 2.0 * p.out_bound)
    bound = F32(p.out_bound) if p.out_bound > 0 else F32(np.inf)
    nm = p.noise_management == "abs_max"
    amax = F32(np.abs(x).max())
    if nm and amax <= 0:
        return np.zeros(w.shape[0], F32)
    reduction = F32(0.5)
    while True:
        reduction *= F32(2)
        scale = F32(1)
        if nm:
            scale = scale / amax
        if p.bound_management == "iterative":
            scale = scale / reduction
        v = x * scale
        if d_in > 0:
            v = np.rint(v / d_in) * d_in
        v = np.clip(v, F32(-1), F32(1)).astype(F32)
        z = (w.astype(np.float64) @ v.astype(np.float64)).astype(F32)
        if p.ir_drop > 0:
            a = (np.abs(w).astype(np.float64) @ np.abs(v).astype(np.float64)).astype(F32) * (F32(n) / F32(p.ir_drop_g_ratio))
            c = a * (a * (F32(0.05) * a - F32(0.2)) + F32(0.5))
            q = F32(1) - np.arange(n, dtype=F32) / F32(n)
            z = z - c * (F32(p.ir_drop) * (w.astype(np.float64) @ (v * (F32(1) - q * q))).astype(F32))
        if p.out_noise > 0:
            z = z + F32(p.out_noise) * rng.standard_normal(z.size).astype(F32)
        if d_out > 0:
            z = np.rint(z / d_out) * d_out
        ok = bool(np.all(z <= bound) and np.all(z >= -bound))
        z = np.clip(z, -bound, bound).astype(F32)
        if p.bound_management != "iterative" or ok or reduction > p.max_bm_factor or (
                d_in > 0 and reduction > F32(p.max_bm_res) / d_in):
            return (z * (F32(1) / scale)).astype(F32)


def ref_linear(p, x, w, rng, bias=None):
    """Rows of x (M, n) through the layer w (m, n): balanced tiles, weight mapping, digital sums."""
    ins, outs = _splits(w.shape[1], p.max_input_size), _splits(w.shape[0], p.max_output_size)
    y = np.zeros((x.shape[0], w.shape[0]), F32)
    c0 = 0
    for ni in ins:
        r0 = 0
        for mo in outs:
            wt = w[r0:r0 + mo, c0:c0 + ni].astype(F32)
            a = np.ones((mo, 1), F32)
            if p.weight_scaling_omega > 0:
                wmax = np.abs(wt).max(axis=1, keepdims=True) if p.weight_scaling_columnwise else \
                    np.full((mo, 1), np.abs(wt).max(), F32)
                a = (wmax / F32(p.weight_scaling_omega)).astype(F32)
                a[a == 0] = 1
            for i in range(x.shape[0]):
                y[i, r0:r0 + mo] += ref_vector(p, x[i, c0:c0 + ni], wt / a, rng) * a[:, 0]
            r0 += mo
        c0 += ni
    return y if bias is None else y + bias


def _run(p, layer, x, draws=1, seed=0):
    """The layer's outputs through the periphery fault (draws forward calls, one generator)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), installed([p], layer, ActivationFormat(), gen):
        return torch.stack([layer(x) for _ in range(draws)]).numpy()


def _dyadic_linear(n=48, m=20, seed=0):
    """Weights k/64 and inputs k/1024 with abs-max a power of two: every product, sum and step of the
    tile is exact in float32, so the comparison is bit for bit."""
    g = np.random.default_rng(seed)
    lin = nn.Linear(n, m, bias=False)
    w = g.integers(-64, 65, (m, n)).astype(F32) / 64
    x = g.integers(-1024, 1025, (9, n)).astype(F32) / 1024
    x[:, 0] = np.sign(x[:, 0] + 0.5)  # |x| max = 1 in every row
    x[3] *= 4
    x[4] = 0  # a zero vector reads 0
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    return lin, w, x


# ----------------------------------------------------------------------------- bit for bit, noise off


@pytest.mark.parametrize("kw", [
    dict(inp_res=1 / 128, out_res=1 / 256, out_bound=8.0),                          # DAC step 1/64, ADC 1/16
    dict(inp_res=128.0, out_res=256.0, out_bound=8.0),                              # the same, given as levels
    dict(inp_res=1 / 128, out_res=1 / 256, out_bound=2.0),                          # saturates: bound management
    dict(inp_res=1 / 128, out_res=1 / 256, out_bound=2.0, bound_management="none"),  # saturates: clipped
    dict(inp_res=1 / 128, out_res=0.0, out_bound=0.0, bound_management="none"),      # DAC only
    dict(inp_res=0.0, out_res=1 / 256, out_bound=8.0, max_input_size=20, max_output_size=8),  # tiles 16+16+16 x 7+7+6
])
def test_dac_adc_and_saturation_bit_for_bit_against_numpy(kw):
    lin, w, x = _dyadic_linear()
    p = Periphery(out_noise=0.0, **kw)
    got = _run(p, lin, torch.from_numpy(x))[0]
    want = ref_linear(p, x, w, None)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert not np.array_equal(got, x @ w.T) and np.all(got[4] == 0)
    if p.out_bound > 0 and p.bound_management == "none":
        assert np.abs(got).max() <= p.out_bound * 4 and np.isclose(np.abs(got[0]).max(), p.out_bound)


def test_the_dac_and_adc_quantise_to_their_grids():
    lin, w, x = _dyadic_linear()
    p = Periphery(inp_res=1 / 128, out_res=1 / 1024, out_bound=64.0, bound_management="none", out_noise=0.0)
    got = _run(p, lin, torch.from_numpy(x))[0]
    x_dac = np.clip(np.rint(x / np.abs(x).max(1, keepdims=True).clip(1e-30) * 64) / 64, -1, 1)
    assert np.array_equal(got[[0, 1, 2, 3]], (np.rint(x_dac @ w.T * 8) / 8 * np.abs(x).max(1, keepdims=True))[[0, 1, 2, 3]])


def test_bound_management_halves_the_input_until_the_output_fits():
    n = 64
    lin = nn.Linear(n, 3, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    x = torch.ones(2, n)
    x[1] *= 0.5
    exact = dict(out_res=0.0, out_noise=0.0, inp_res=1 / 128)
    # 64 > 12: r = 1, 2, 4 saturate, r = 8 reads 8 < 12, times the scale 8: exact
    got = _run(Periphery(out_bound=12.0, **exact), lin, x)[0]
    assert np.array_equal(got, [[64.0] * 3, [32.0] * 3])
    # without bound management the output saturates at the bound (times abs-max)
    got = _run(Periphery(out_bound=12.0, bound_management="none", **exact), lin, x)[0]
    assert np.array_equal(got, [[12.0] * 3, [6.0] * 3])
    # the DAC's limit: the rounds stop once r > max_bm_res / d_in = 0.25 / (2/128) = 16, at r = 32
    big = nn.Linear(1024, 1, bias=False)
    with torch.no_grad():
        big.weight.fill_(1.0)
    p = Periphery(out_bound=12.0, max_input_size=0, **exact)
    got = _run(p, big, torch.ones(1, 1024))[0]
    assert got[0, 0] == 12.0 * 32 and np.array_equal(got, ref_linear(p, np.ones((1, 1024), F32), np.ones((1, 1024), F32), None))
    # max_bm_factor stops the rounds too (r = 4 > 3)
    p = Periphery(out_bound=12.0, max_input_size=0, max_bm_factor=3, **exact)
    assert _run(p, big, torch.ones(1, 1024))[0][0, 0] == 12.0 * 4


@pytest.mark.parametrize("kw", [dict(ir_drop=1.0), dict(ir_drop=2.0, weight_scaling_omega=1.0),
                                dict(weight_scaling_omega=0.6, weight_scaling_columnwise=True),
                                dict(noise_management="none", max_input_size=30)])
def test_ir_drop_mapping_and_noise_management_against_numpy(kw):
    g = np.random.default_rng(3)
    lin = nn.Linear(100, 24)
    w = (g.standard_normal((24, 100)) * 0.2).astype(F32)
    b = (g.standard_normal(24) * 0.1).astype(F32)
    x = (g.standard_normal((12, 100)) * (0.4 if kw.get("noise_management") else 1.5)).astype(F32)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    p = Periphery(out_noise=0.0, **kw)
    got = _run(p, lin, torch.from_numpy(x))[0]
    want = ref_linear(p, x, w, None, bias=b)
    d_out = 24.0 / 510 * np.abs(x).max()
    close = np.abs(got - want) <= 1e-5 * (1 + np.abs(want))
    # float32 sums in another order may land an ADC rounding on the other side: rare, one step
    assert close.mean() >= 0.99 and np.all(np.abs(got - want)[~close] <= d_out * 1.01 * 4)
    if kw.get("ir_drop"):  # with the ADC off, the drop's first-order term is there, as numpy has it
        p0 = Periphery(out_noise=0.0, out_res=0.0, **kw)
        drop = _run(p0, lin, torch.from_numpy(x))[0] - _run(replace(p0, ir_drop=0.0), lin, torch.from_numpy(x))[0]
        want = ref_linear(p0, x, w, None) - ref_linear(replace(p0, ir_drop=0.0), x, w, None)
        assert np.abs(drop).max() > 0 and np.allclose(drop, want, rtol=1e-3, atol=1e-6)


def test_a_convolution_is_its_matrix_form_one_patch_per_input_vector():
    g = np.random.default_rng(5)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    x = g.standard_normal((2, 3, 7, 7)).astype(F32)
    p = Periphery(out_noise=0.0)
    got = _run(p, conv, torch.from_numpy(x))[0]
    w = conv.weight.detach().numpy().reshape(4, -1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros_like(got)
    for i in range(got.shape[2]):
        for j in range(got.shape[3]):
            patch = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(2, -1)  # (C, kh, kw) order, as weight.reshape
            want[:, :, i, j] = ref_linear(p, patch, w, None, bias=conv.bias.detach().numpy())
    close = np.isclose(got, want, rtol=1e-5, atol=1e-6)
    assert close.mean() > 0.99 and np.abs(got - want).max() <= 24 / 510 * np.abs(x).max() * 1.01


def test_a_large_convolution_batch_runs_a_few_images_at_a_time_with_the_same_result(monkeypatch):
    import hwfault.faults.models.periphery as per

    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(7, 3, 6, 6)
    p = Periphery(out_noise=0.0)
    whole = _run(p, conv, x)[0]
    monkeypatch.setattr(per, "PATCHES", 3 * 36 * 27)  # three images' patches at a time
    assert np.array_equal(_run(p, conv, x)[0], whole)


# ----------------------------------------------------------------------------- in distribution, noise on


def _error_stats(outs, ideal):
    err = outs - ideal[None]
    return err.mean(0), err.std(0, ddof=1)


def _agree(a, b, draws):
    """(std ratio, chi2 per element of the mean difference): 1 and about 1 when they agree."""
    (ma, sa), (mb, sb) = a, b
    ratio = float(np.sqrt((sa ** 2).mean() / (sb ** 2).mean()))
    se2 = (sa ** 2 + sb ** 2) / draws
    return ratio, float(((ma - mb) ** 2 / se2).mean())


def test_output_error_mean_and_std_match_the_reference_and_the_tolerances_catch_mistakes():
    g = np.random.default_rng(11)
    n, m, rows, draws = 64, 32, 16, 600
    lin = nn.Linear(n, m, bias=False)
    w = g.uniform(-0.5, 0.5, (m, n)).astype(F32)
    x = g.standard_normal((rows, n)).astype(F32)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    p = Periphery()  # aihwkit's IOParameters defaults
    ideal = x @ w.T
    ours = _error_stats(_run(p, lin, torch.from_numpy(x), draws=draws), ideal)
    rng = np.random.default_rng(0)
    ref = _error_stats(np.stack([ref_linear(p, x, w, rng) for _ in range(draws)]), ideal)
    ratio, chi2 = _agree(ours, ref, draws)
    assert 0.96 < ratio < 1.04 and chi2 < 1.4, (ratio, chi2)
    # the noise is out_noise in the tile's units, times the input scale: 0.06 max|x|, before the ADC
    assert 0.9 < float(np.sqrt((ours[1] ** 2).mean()) / (0.06 * np.abs(x).max(1)).mean()) < 1.1
    # the same tolerances fail for a noise 20% too large, for noise relative to the bound, and without the DAC
    for wrong in (dict(out_noise=0.072), dict(out_noise=0.06 * 12), dict(inp_res=0.0)):
        bad = _error_stats(np.stack([ref_linear(Periphery(**wrong), x, w, rng) for _ in range(draws)]), ideal)
        r2, c2 = _agree(ours, bad, draws)
        assert not (0.96 < r2 < 1.04 and c2 < 1.4), (wrong, r2, c2)


def test_hwfault_matches_the_aihwkit_figures_recorded_by_the_bench():
    """bench/periphery_vs_aihwkit.py ran aihwkit's own AnalogLinear (C++ tile) on seeded problems and
    recorded its error figures; hwfault, rerun here on the same problems, must match them: the noise
    (pooled std) within 3%, the deterministic part (DAC/ADC rounding, saturation, IR drop) within 6%,
    and with the noise off the same values."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    path = root / "bench" / "results" / "periphery_vs_aihwkit.json"
    if not path.exists():
        pytest.skip("bench/results/periphery_vs_aihwkit.json not written")
    d = json.loads(path.read_text())
    if not d["aihwkit"]["installed"]:
        pytest.skip("aihwkit was not installed when the bench ran: " + d["aihwkit"].get("why", ""))
    spec = importlib.util.spec_from_file_location("_bench_periphery", root / "bench" / "periphery_vs_aihwkit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert [c["name"] for c in d["cases"]] == [c[0] for c in bench.cases()]
    for case in d["cases"]:
        w, b, x = bench.problem(case["inputs"], case["in_features"], case["out_features"], d["rows_per_call"])
        ideal = (x @ w.T + b).numpy()
        draws = min(case["draws"], 300)
        ours = bench.stats(bench.draws_hwfault(case["fields"], w, b, x, draws), ideal)
        peer = case["peer"]
        if case["draws"] == 1:
            assert ours["error_det"] == pytest.approx(peer["error_det"], rel=1e-6), case["name"]
            assert ours["error_mean"] == pytest.approx(peer["error_mean"], rel=1e-5, abs=1e-8), case["name"]
            continue
        assert ours["error_std"] == pytest.approx(peer["error_std"], rel=0.03), case["name"]
        assert ours["error_det"] == pytest.approx(peer["error_det"], rel=0.06), case["name"]
    assert d["all_agree"] and d["controls_fail"]


# ----------------------------------------------------------------------------- the mechanism


def test_hooks_are_removed_and_the_model_is_bit_identical_after_an_exception(digits):
    model = hw.load_model("digits-cnn")
    x, _ = digits.tensors
    x = x[:100]
    with torch.no_grad():
        ref = model(x)
    with pytest.raises(RuntimeError, match="boom"):
        with hw.realised(model, "aihwkit-inference", seed=0, trial=1) as m:
            with torch.no_grad():
                out = m(x)
            assert type(out) is torch.Tensor and not torch.equal(out, ref)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        again = model(x)
    assert type(again) is torch.Tensor and torch.equal(again, ref)


def test_draws_are_a_pure_function_of_seed_and_trial_and_redrawn_per_call(digits):
    model = hw.load_model("digits-mlp")
    x = digits.tensors[0][:64]

    def two_calls(seed, trial):
        with hw.realised(model, "aihwkit-inference", seed=seed, trial=trial) as m, torch.no_grad():
            return m(x), m(x)

    a1, a2 = two_calls(0, 3)
    b1, b2 = two_calls(0, 3)
    c1, _ = two_calls(0, 4)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)  # transient: a new draw per forward call
    twin = hw.faulty_copy(model, "aihwkit-inference", seed=0, trial=3)
    with torch.no_grad():
        assert torch.equal(twin(x), a1)


def test_a_layer_without_an_analog_product_is_an_error_not_a_no_op():
    class Odd(nn.Linear):
        def forward(self, x):
            return x[..., :self.out_features] * 2

    with pytest.raises(HwfaultError, match="layer '' computes no F.linear"):
        _run(Periphery(), Odd(8, 4), torch.randn(2, 8))
    with pytest.raises(HwfaultError, match="transposed convolution"):
        _run(Periphery(), nn.ConvTranspose2d(2, 2, 3), torch.randn(1, 2, 5, 5))
    with pytest.raises(HwfaultError, match="two periphery faults"):
        gen = torch.Generator().manual_seed(0)
        with installed([Periphery(), Periphery()], nn.Linear(4, 2), ActivationFormat(), gen) as lin:
            lin(torch.randn(1, 4))


def test_the_periphery_keeps_float64_and_grouped_padded_convolutions():
    conv = nn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="reflect").double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    ideal = Periphery(inp_res=0.0, out_res=0.0, out_noise=0.0, out_bound=0.0, bound_management="none")
    got = torch.from_numpy(_run(ideal, conv, x)[0])
    assert got.dtype == torch.float64 and torch.allclose(got, conv(x).detach(), atol=1e-5)


# ----------------------------------------------------------------------------- spec and command line


@pytest.mark.parametrize("body, needle", [
    ("out_noise = -0.1", "faults[0].out_noise"),
    ("inp_res = nan", "faults[0].inp_res: expected a finite number"),
    ('bound_management = "iterate"', "faults[0].bound_management"),
    ("out_bound = 0.0\nbound_management = \"none\"", "faults[0].out_res: expected 0 (no ADC) with out_bound = 0"),
    ("out_bound = 0.0\nout_res = 0.0", "faults[0].bound_management"),
    ('types = ["norm"]', "faults[0].types[0]: expected an analog tile's layer type"),
    ("weight_scaling_columnwise = true", "faults[0].weight_scaling_columnwise"),
    ("max_input_size = 1.5", "faults[0].max_input_size"),
    ("out_nois = 0.1", "faults[0].out_nois"),
])
def test_bad_periphery_specs_are_one_line_exit_2(body, needle, tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text(f'schema_version = 1\nname = "t"\n[format]\nkind = "fp32"\n[[faults]]\nkind = "periphery"\n{body}\n')
    code = main(["chips", "check", str(p)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err


def test_the_preset_reads_aihwkits_defaults_and_builds_the_fault():
    spec = hw.load_chip("aihwkit-inference")
    kinds = [f.kind for f in spec.faults]
    assert kinds == ["pcm", "periphery"]
    per = build_fault(spec.faults[1])
    assert isinstance(per, Periphery) and per.forward and per.transient
    assert (per.inp_res, per.out_res, per.out_noise, per.out_bound) == (1 / 126, 1 / 510, 0.06, 12.0)
    assert (per.noise_management, per.bound_management, per.weight_scaling_omega) == ("abs_max", "iterative", 1.0)
    assert per.steps == (pytest.approx(2 / 126), pytest.approx(24 / 510))
    assert per.scaled(2.0).out_noise == 0.12 and per.describe()["kind"] == "periphery"


def test_estimate_runs_the_preset_on_digits_mlp(tmp_path, capsys):
    js = tmp_path / "e.json"
    code = main(["estimate", "-m", "digits-mlp", "--chip", "aihwkit-inference", "--trials", "6", "--json", str(js)])
    assert code == 0, capsys.readouterr().err
    d = json.loads(js.read_text())
    mc = d["random"]
    assert mc["trials"] == 6 and 0.5 < mc["accuracy_mean"] <= d["clean"]["accuracy"] + 0.02
    assert len(set(mc["accuracies"])) > 1  # the chips differ
    assert [f["kind"] for f in d["chip"]["faults"]] == ["pcm", "periphery"]
    per = d["faults"][1]
    assert per["fault"]["kind"] == "periphery" and per["random"]["trials"] >= 1
