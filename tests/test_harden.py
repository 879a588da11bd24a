"""Hardening: each method's gradient against its definition, invariants, effect, checkpoints, errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from hwfault import load_data, load_model
from hwfault.cli import main
from hwfault.errors import ConstraintError
from hwfault.analyses.estimate import monte_carlo
from hwfault.evaluation import evaluate
from hwfault.faults import Chip
from hwfault.analyses.harden import HardenConfig, Trainer, harden
from hwfault.spec import load_chip


@pytest.fixture(scope="module")
def digits():
    x, y = load_data("digits", "train").tensors
    return x[:64], y[:64]


def _grads_of(trainer, x, y):
    for p in trainer.params:
        p.grad = None
    trainer.step(x, y)
    return [p.grad.clone() for p in trainer.params]


def _fresh(name="digits-cnn"):
    m = load_model(name)
    for p in m.parameters():
        p.requires_grad_(True)
    m.train()
    return m


def _clean_grads(m, x, y):
    loss = F.cross_entropy(m(x), y)
    return torch.autograd.grad(loss, list(m.parameters()))


@pytest.mark.parametrize("cfg", [
    {"method": "crt", "lam": 0.0},
    {"method": "crt-star", "eps": 0.5, "alpha": 0.0},
    {"method": "crt-star", "eps": 0.0, "alpha": 1.0},
    {"method": "apd", "eps": 0.0, "steps": 3},
])
def test_degenerate_settings_reduce_to_the_clean_gradient(cfg, digits):
    x, y = digits
    m = _fresh()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    got = _grads_of(Trainer(m, HardenConfig(**cfg)), x, y)
    m.load_state_dict(state)
    want = _clean_grads(m, x, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_crt_penalty_gradient_matches_finite_differences(digits):
    """d/dw of L + lambda ||dL/dw||_2 (double backprop) against central differences along a direction."""
    x, y = digits
    torch.manual_seed(0)
    m = load_model("digits-mlp").double()
    for p in m.parameters():
        p.requires_grad_(True)
    xd = x.double()
    lam = 0.3
    params = list(m.parameters())

    def objective():
        loss = F.cross_entropy(m(xd), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        return loss + lam * torch.sqrt(sum((gi * gi).sum() for gi in g))

    got = _grads_of(Trainer(m, HardenConfig(method="crt", lam=lam)), xd, y)
    d = [torch.randn_like(p) for p in params]
    analytic = sum((g * di).sum() for g, di in zip(got, d))
    h = 1e-5
    with torch.no_grad():
        for p, di in zip(params, d):
            p.add_(h * di)
    up = objective().item()
    with torch.no_grad():
        for p, di in zip(params, d):
            p.sub_(2 * h * di)
    down = objective().item()
    assert analytic.item() == pytest.approx((up - down) / (2 * h), rel=1e-4)


def test_crt_star_is_the_mix_of_clean_and_corrupted_gradients(digits):
    x, y = digits
    m = _fresh()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    got = _grads_of(Trainer(m, HardenConfig(method="crt-star", eps=0.4, alpha=0.3)), x, y)
    m.load_state_dict(state)
    g0 = _clean_grads(m, x, y)
    flat = torch.cat([g.reshape(-1) for g in g0])
    a_hat = 0.4 * flat / flat.norm()
    with torch.no_grad():
        i = 0
        for p in m.parameters():
            p.add_(a_hat[i:i + p.numel()].view_as(p))
            i += p.numel()
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    for mod in bn:
        mod.momentum = 0.0
    g1 = _clean_grads(m, x, y)
    for g, u, v in zip(got, g0, g1):
        torch.testing.assert_close(g, 0.7 * u + 0.3 * v, rtol=1e-4, atol=1e-6)


def test_faulty_passes_leave_batchnorm_statistics_alone(digits):
    x, y = digits
    m = _fresh()
    ref = _fresh()
    ref(x)  # one clean training forward: the statistics a step may change
    Trainer(m, HardenConfig(method="apd", eps=0.5, steps=3)).step(x, y)
    for a, b in zip(m.buffers(), ref.buffers()):
        assert torch.equal(a, b)


def test_harden_leaves_the_base_untouched_and_clips_for_randbet(digits):
    base = load_model("digits-mlp")
    snap = {k: v.clone() for k, v in base.state_dict().items()}
    r = harden(base, digits, HardenConfig(method="randbet", epochs=1, clip=0.05), chip_spec=load_chip("int8-sram-0.5v"),
               qat=False)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in snap.items())
    assert not any(p.requires_grad for p in r.model.parameters())
    for name, p in r.model.named_parameters():
        if name.endswith("weight"):
            assert float(p.abs().max()) <= 0.05 + 1e-7


def _apply_flat(model, flat):
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            p.add_(flat[i:i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()


def test_apd_gradient_is_the_mean_over_its_ascent_trajectory(digits):
    """Zhang et al.'s adversarial parameter defence, recomputed from its definition: a_0 = 0,
    a_{k+1} = Proj_{||a||_2 <= eps}(a_k + eta g_k / ||g_k||_2), eta = 1.5 eps / K, and the training
    gradient is the mean of dL/dw at w + a_k over k = 0..K (BatchNorm statistics move only in the clean pass)."""
    x, y = digits
    eps, K = 0.5, 3
    m = _fresh()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    got = _grads_of(Trainer(m, HardenConfig(method="apd", eps=eps, steps=K)), x, y)
    m.load_state_dict(state)
    trajectory = [_clean_grads(m, x, y)]                         # the clean pass (updates BN statistics)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = 0.0
    after_clean = {k: v.clone() for k, v in m.state_dict().items()}
    a = torch.zeros(sum(p.numel() for p in m.parameters()), dtype=torch.float64)
    g = torch.cat([t.reshape(-1) for t in trajectory[0]]).double()
    for _ in range(K):
        a = a + (1.5 * eps / K) * g / g.norm()
        if a.norm() > eps:
            a = a * (eps / a.norm())
        _apply_flat(m, a)
        trajectory.append(_clean_grads(m, x, y))
        m.load_state_dict(after_clean)
        g = torch.cat([t.reshape(-1) for t in trajectory[-1]]).double()
    want = [sum(gs) / (K + 1) for gs in zip(*trajectory)]
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=2e-4, atol=2e-6)
    # the reference is not the clean gradient: the trajectory moved it
    drift = max(float((w - c).abs().max()) for w, c in zip(want, trajectory[0]))
    assert drift > 1e-3 * max(float(c.abs().max()) for c in trajectory[0])


def test_randbet_gradient_is_the_mix_of_clean_and_bit_error_gradients(digits):
    """RandBET (Stutz et al.), recomputed from its definition: the device weights stored in the chip's
    integer format with random bit errors at rate ber drawn from the trainer's generator; the training
    gradient is (1 - alpha) g(w) + alpha g(w + bit errors) on the device weights, g(w) elsewhere."""
    from hwfault.faults import BitFlip, DeviceView
    from hwfault.formats import NumberFormat
    from hwfault.params import select

    x, y = digits
    m = _fresh("digits-mlp")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    spec = load_chip("int8-sram-0.5v")
    got = _grads_of(Trainer(m, HardenConfig(method="randbet", ber=0.01, alpha=0.3), spec,
                            gen=torch.Generator().manual_seed(5)), x, y)
    m.load_state_dict(state)
    g0 = _clean_grads(m, x, y)
    dev = select(m, types=["conv", "linear"]).weights_only()
    view = DeviceView.build(dev, NumberFormat.parse(spec.format.kind, per_channel=spec.format.scale == "per-channel"))
    faulty = BitFlip(ber=0.01).sample(view, view.w_q.double().clone(), torch.Generator().manual_seed(5))
    flipped = int((faulty != view.w_q.double()).sum())
    assert flipped > 10                                            # the reference has real bit errors in it
    delta = (faulty - view.w.double()).float()
    with torch.no_grad():
        for p, d in zip(dev.params, dev.split(delta)):
            p.add_(d)
    g1 = dict(zip([n for n, _ in m.named_parameters()], _clean_grads(m, x, y)))
    m.load_state_dict(state)
    names = [n for n, _ in m.named_parameters()]
    for name, u, c in zip(names, got, g0):
        want = 0.7 * c + 0.3 * g1[name] if name in dev.names else c
        torch.testing.assert_close(u, want, rtol=1e-4, atol=1e-6)
    assert max(float((g1[n] - c).abs().max()) for n, c in zip(names, g0) if n in dev.names) > 1e-4


def test_noise_training_raises_monte_carlo_accuracy_on_rram():
    """Hardware-aware training on the 4-bit RRAM chip: clearly better Monte-Carlo chips, clean kept."""
    spec = load_chip("rram-4bit")
    base = load_model("digits-mlp")
    test = load_data("digits")
    r = harden(base, load_data("digits", "train"), HardenConfig(method="noise", epochs=15, lr=2e-3), chip_spec=spec,
               qat=False)

    def mc(model):
        return monte_carlo(Chip.build(spec, model), model, test, trials=20, seed=3)["accuracy_mean"]

    assert mc(r.model) >= mc(base) + 0.05
    assert evaluate(r.model, test).accuracy >= evaluate(base, test).accuracy - 0.02


def test_integer_chips_train_through_brevitas_qat(digits):
    """QAT at the chip's width and granularity: the saved float weights, stored by the chip, are the
    integer weights the training forward passes used."""
    from hwfault.formats import NumberFormat
    from hwfault.quant import dequantized_state_dict, quantize_model

    spec = load_chip("int8-sram-0.5v")
    r = harden(load_model("digits-mlp"), digits, HardenConfig(method="noise", epochs=1), chip_spec=spec)
    assert r.config.qat_bits == 8 and r.config.qat_per_channel
    fmt = NumberFormat.parse("int8", per_channel=True)
    deq = dequantized_state_dict(quantize_model(r.model, 8, per_channel=True))
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        w = dict(r.model.named_parameters())[name]
        torch.testing.assert_close(fmt.quantize(w), deq[name], rtol=0, atol=1e-6)


def test_config_errors():
    with pytest.raises(ConstraintError, match="did you mean 'crt-star'"):
        HardenConfig(method="crt_star")
    for bad in ({"epochs": 0}, {"alpha": 1.5}, {"eps": -1.0}):
        with pytest.raises(ConstraintError):
            HardenConfig(method="crt-star", **bad)


def test_cli_harden_writes_a_loadable_checkpoint_and_report(tmp_path, capsys):
    out = tmp_path / "cnn-hard.safetensors"
    code = main(["harden", "-m", "digits-mlp", "--method", "crt-star", "--chip", "int8-sram-nominal", "--no-qat",
                 "--epochs", "1", "--trials", "5", "--out", str(out)])
    assert code == 0
    rep = json.loads(out.with_suffix(".hardening.json").read_text())
    assert set(rep) >= {"base", "hardened", "summary"}
    assert set(rep["base"]) == set(rep["hardened"]) >= {"clean", "random", "worst_case", "chip"}
    assert out.with_suffix(".hardening.png").stat().st_size > 0 and out.with_suffix(".md").is_file()
    m = load_model(out)
    assert evaluate(m, load_data("digits")).accuracy == pytest.approx(rep["hardened"]["clean"]["accuracy"])
    capsys.readouterr()
    assert main(["estimate", "-m", str(out), "-d", "digits", "--chip", "int8-sram-nominal", "--trials", "3",
                 "--no-breakdown"]) == 0


def test_cli_harden_from_scratch_without_chip_and_pt2_models(tmp_path, capsys):
    import torch

    out = tmp_path / "s.safetensors"
    assert main(["harden", "-m", "digits-mlp", "--method", "crt", "--from-scratch", "--epochs", "2", "--out", str(out)]) == 0
    assert "skipped the hardening report" in capsys.readouterr().err and out.with_suffix(".md").is_file()
    assert evaluate(load_model(out), load_data("digits")).accuracy > 0.5  # trained anew, 2 epochs
    m = load_model("digits-mlp")
    x = load_data("digits").tensors[0][:4]
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(ep, str(tmp_path / "u.pt2"))
    out2 = tmp_path / "u-hard.pt2"
    assert main(["harden", "-m", str(tmp_path / "u.pt2"), "-d", "digits", "--method", "crt-star", "--epochs", "1",
                 "--out", str(out2)]) == 0
    assert evaluate(load_model(out2), load_data("digits")).accuracy > 0.9


@pytest.mark.parametrize("args,needle", [
    (["--method", "sam"], "unknown hardening method 'sam'"),
    (["--method", "noise"], "needs --chip"),
    (["--method", "crt", "--epochs", "0"], "--epochs >= 1"),
])
def test_cli_harden_bad_input(tmp_path, capsys, args, needle):
    code = main(["harden", "-m", "digits-mlp", *args, "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
