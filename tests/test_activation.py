"""Activation faults: flips of layer outputs at the rate and places the spec says (counts Binomial per
inference, positions uniform over neurons and bits), in the activation format's bits, stuck neurons
fixed per chip, and the model bit-identical to the fault-free one after every chip, also when the
block raises."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import hwfault as hw
from hwfault.cli import main
from hwfault.faults import Chip
from hwfault.rng import generator
from hwfault.spec import ChipSpec

torch.manual_seed(0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 5)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _chip(model, faults, act=None, fmt="fp32"):
    spec = {"schema_version": 1, "name": "t", "format": {"kind": fmt}, "faults": faults}
    if act:
        spec["activations"] = {"format": act}
    return Chip.build(ChipSpec.model_validate(spec), model)


def _outputs(model, chip, x, seed=0, layer="fc1"):
    """The fault-free and faulty outputs of ``layer`` (a hook registered after the fault's sees them)."""
    got = {}
    mod = dict(model.named_modules())[layer]
    with torch.no_grad():
        clean = mod(x if layer == "fc1" else None) if layer == "fc1" else None
        with chip.forward_hooks(model, generator(seed, 0)):
            h = mod.register_forward_hook(lambda m, a, o: got.__setitem__("out", o.detach().clone()))
            try:
                model(x)
            finally:
                h.remove()
    return clean, got["out"]


def _bits32(t):
    return t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _popcount(v):
    return sum(((v >> b) & 1) for b in range(32))


def test_flip_counts_are_binomial_per_inference_and_bits_uniform():
    model = _Net().eval()
    ber = 2e-3
    chip = _chip(model, [{"kind": "activation-bitflip", "ber": ber, "types": ["linear"], "params": ["fc1"]}])
    x = torch.randn(400, 12)
    counts, bits = [], np.zeros(32)
    for seed in range(5):
        clean, faulty = _outputs(model, chip, x, seed)
        diff = _bits32(clean) ^ _bits32(faulty)
        counts += _popcount(diff).sum(1).tolist()
        for b in range(32):
            bits[b] += int(((diff >> b) & 1).sum())
    m = 40 * 32  # neurons x bits of fc1, per input
    k = np.arange(0, 12)
    obs = np.array([sum(1 for c in counts if c == v) for v in k[:-1]] + [sum(1 for c in counts if c >= k[-1])])
    exp = np.array([stats.binom.pmf(v, m, ber) for v in k[:-1]] + [stats.binom.sf(k[-1] - 1, m, ber)]) * len(counts)
    keep = exp >= 5
    obs = np.r_[obs[keep], obs[~keep].sum()]
    exp = np.r_[exp[keep], exp[~keep].sum()]
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    assert stats.chisquare(bits).pvalue > 1e-3  # every bit position equally likely
    assert abs(np.mean(counts) - m * ber) < 4 * math.sqrt(m * ber / len(counts))


def _raw_and_faulty(model, chip, x, seed):
    """Per linear layer, in one forward pass: its output before the fault hook (a hook registered
    first) and after it (a hook registered after the fault's)."""
    raw, faulty, hooks = {}, {}, []
    lin = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        hooks += [m.register_forward_hook(lambda m, a, o, n=n: raw.__setitem__(n, o.detach().clone())) for n, m in lin]
        with torch.no_grad(), chip.forward_hooks(model, generator(seed, 1)):
            hooks += [m.register_forward_hook(lambda m, a, o, n=n: faulty.__setitem__(n, o.detach().clone()))
                      for n, m in lin]
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return raw, faulty


def test_count_mode_flips_exactly_count_bits_per_input_over_all_layers():
    model = _Net().eval()
    chip = _chip(model, [{"kind": "activation-bitflip", "count": 3, "types": ["linear"]}])
    raw, faulty = _raw_and_faulty(model, chip, torch.randn(50, 12), 0)
    n1, n2 = (_popcount(_bits32(raw[k]) ^ _bits32(faulty[k])).sum(1) for k in ("fc1", "fc2"))
    assert bool(((n1 + n2) == 3).all())
    assert 0 < int(n2.sum()) < int(n1.sum())  # spread over the layers by their sizes (40 vs 5 neurons)


def test_persistent_flips_hit_the_same_cells_for_every_input():
    model = _Net().eval()
    chip = _chip(model, [{"kind": "activation-bitflip", "count": 2, "mode": "persistent", "params": ["fc1"]}])
    x = torch.randn(30, 12)
    clean, faulty = _outputs(model, chip, x, seed=3)
    diff = _bits32(clean) ^ _bits32(faulty)
    assert bool((diff == diff[0]).all()) and int(_popcount(diff[0]).sum()) == 2


def test_stuck_neurons_are_fixed_per_chip():
    model = _Net().eval()
    chip = _chip(model, [{"kind": "activation-stuck", "sa0": 0.1, "sa1": 0.05, "params": ["fc1"]}])
    x = torch.randn(20, 12)
    clean, faulty = _outputs(model, chip, x, seed=2)
    hit = (faulty != clean)
    cols = hit.any(0)
    assert bool(cols.any())
    zero = (faulty[:, cols] == 0).all(0)
    high = (faulty[:, cols] == clean.abs().amax(1, keepdim=True)).all(0)
    assert bool((zero | high).all())  # each stuck neuron reads 0 or its input's largest |output|, on every input


def test_int8_activation_flip_against_an_independent_implementation():
    model = _Net().eval()
    chip = _chip(model, [{"kind": "activation-bitflip", "count": 1, "params": ["fc1"]}], act="int8")
    x = torch.randn(40, 12)
    clean, faulty = _outputs(model, chip, x, seed=5)
    for i in range(len(x)):
        (j,) = torch.nonzero(faulty[i] != clean[i]).reshape(-1).tolist() or [None]
        if j is None:
            continue
        a = clean[i].double().numpy()
        s = np.float32(np.abs(a).max() / 127)
        q = int(np.clip(np.round(np.float32(a[j]) / s), -128, 127)) & 0xFF
        options = set()
        for b in range(8):
            c = q ^ (1 << b)
            options.add(float(np.float32((c - 256 if c >= 128 else c) * s)))
        assert float(faulty[i, j]) in options


def test_the_model_is_bit_identical_after_a_chip_also_when_the_block_raises(digits):
    model = hw.load_model("digits-cnn")
    x, _ = digits.tensors
    with torch.no_grad():
        ref = model(x)
    spec = ChipSpec.model_validate({"schema_version": 1, "name": "t", "format": {"kind": "fp32"}, "faults": [
        {"kind": "activation-bitflip", "ber": 1e-3}, {"kind": "activation-stuck", "sa0": 0.01}]})
    with pytest.raises(RuntimeError, match="boom"):
        with hw.realised(model, spec, seed=0, trial=1) as m:
            assert not m._forward_pre_hooks  # no weight redraw for a chip whose only per-inference faults are hooks
            with torch.no_grad():
                assert not torch.equal(m(x), ref)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_monte_carlo_chips_include_activation_faults_and_are_reproducible(digits):
    from hwfault.analyses.estimate import estimate

    spec = ChipSpec.model_validate({"schema_version": 1, "name": "t", "format": {"kind": "fp32"},
                                    "faults": [{"kind": "activation-bitflip", "ber": 2e-5}]})
    a = estimate("digits-cnn", digits, spec, trials=6, seed=0, steps=1, per_fault=False, severities=()).to_dict()
    b = estimate("digits-cnn", digits, spec, trials=6, seed=0, steps=1, per_fault=False, severities=()).to_dict()
    assert a["random"] == b["random"]
    assert a["random"]["accuracy_mean"] < a["clean"]["accuracy"] - 0.01


@pytest.mark.parametrize("fault, needle", [
    ('kind = "activation-bitflip"\nber = 1e-3\ncount = 2', "exactly one of ber"),
    ('kind = "activation-bitflip"\nber = 1e-3\ntypes = ["convv"]', "did you mean 'conv'"),
    ('kind = "activation-stuck"', "sa0 or sa1 > 0"),
    ('kind = "activation-bitflip"\nber = 2.0', "faults[0].ber"),
])
def test_bad_activation_specs_are_one_line(fault, needle, tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text(f'schema_version = 1\nname = "t"\n[format]\nkind = "fp32"\n[[faults]]\n{fault}\n')
    code = main(["chips", "check", str(p)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_a_bad_activation_format_is_one_line(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text('schema_version = 1\nname = "t"\n[format]\nkind = "fp32"\n[activations]\nformat = "int99"\n')
    code = main(["chips", "check", str(p)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "activations.format" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("faults, act", [
    ([{"kind": "activation-bitflip", "ber": 1e-4}], "int8"),
    ([{"kind": "activation-stuck", "sa0": 0.002, "sa1": 0.001}], None),
    ([{"kind": "activation-bitflip", "count": 1}, {"kind": "bitflip", "ber": 1e-4}], "fp16"),
])
def test_the_estimate_bracket_covers_activation_faults(faults, act, digits):
    from hwfault.analyses.estimate import estimate

    spec = {"schema_version": 1, "name": "t", "format": {"kind": "int8"}, "faults": faults}
    if act:
        spec["activations"] = {"format": act}
    r = estimate("digits-cnn", digits, ChipSpec.model_validate(spec), trials=6, seed=0, steps=2, per_fault=False,
                 severities=()).to_dict()
    wc, mc = r["worst_case"], r["random"]
    assert wc["one_step"]["activation_faults"] >= 1 and "weights_only_accuracy" in wc["one_step"]
    assert wc["one_step"]["accuracy"] <= wc["one_step"]["weights_only_accuracy"] + 1e-12
    assert max(wc["multi_step"]["accuracy"], wc.get("bit_search", {"accuracy": 0})["accuracy"]) \
        <= wc["one_step"]["accuracy"] + 0.01
    assert wc["one_step"]["accuracy"] <= mc["accuracy_min"] + 0.01


def test_the_activation_one_step_takes_each_inputs_largest_first_order_gain():
    """Brute force on a tiny net: every (neuron, bit) flip's first-order gain from the input's own
    gradient; the one-step point flips the argmax (int8 activations: no non-finite flips)."""
    from hwfault.analyses.activation_worst import _choose, budgets
    from hwfault.faults.models.activation import ActivationFormat
    from hwfault.tasks import current

    model = _Net().eval()
    chip = _chip(model, [{"kind": "activation-bitflip", "count": 1, "params": ["fc1"]}], act="int8")
    x, y = torch.randn(8, 12), torch.randint(0, 5, (8,))
    plan = budgets(chip, model, x[:1], 0.999)
    assert plan[0][2] == 1
    flips, _ = _choose(model, x, y, plan, ActivationFormat("int8"), current())
    pos = flips["fc1"]
    for i in range(len(x)):
        a = model.fc1(x[i:i + 1]).detach()
        a.requires_grad_(True)
        loss = nn.functional.cross_entropy(model.fc2(model.act(a)), y[i:i + 1], reduction="sum")
        (g,) = torch.autograd.grad(loss, a)
        s = float(a.detach().abs().max()) / 127
        best, arg = -math.inf, None
        for e in range(40):
            q = int(torch.clamp(torch.round(a[0, e].detach() / s), -128, 127)) & 0xFF
            for b in range(8):
                c = q ^ (1 << b)
                new = (c - 256 if c >= 128 else c) * s
                gain = float(g[0, e]) * (new - float(a[0, e].detach()))
                if gain > best:
                    best, arg = gain, e * 8 + b
        mine = [int(p) - i * 40 * 8 for p in pos if i * 320 <= int(p) < (i + 1) * 320]
        if best > 1e-6:
            assert mine == [arg], (i, mine, arg, best)


def test_an_activation_campaign_agrees_with_an_independent_reference_per_trial(digits):
    """Each trial flips one cell (layer, neuron, bit) for every input; a reference written here (a
    forward hook that XORs that bit of the float32 pattern) gives the same SDC and DUE per trial."""
    import re

    model = hw.load_model("digits-cnn")
    spec = ChipSpec.model_validate({"schema_version": 1, "name": "t", "format": {"kind": "fp32"},
                                    "faults": [{"kind": "activation-bitflip", "count": 1, "mode": "persistent",
                                                "types": ["linear"]}]})
    res = hw.campaign(model, digits, spec, trials=30, seed=1)
    x, y = digits.tensors
    with torch.no_grad():
        gold = model(x)
    pred, correct = gold.argmax(1), gold.argmax(1) == y
    mods = dict(model.named_modules())
    sdcs = []
    for row in res.rows:
        layer, neuron, bit = re.fullmatch(r"(\w+)\[(\d+)\]\.bit(\d+)", row["faults"]).groups()
        neuron, bit = int(neuron), int(bit)

        def flip(m, a, o):
            flat = o.reshape(o.shape[0], -1).clone()
            col = flat[:, neuron].numpy().copy().view(np.uint32) ^ np.uint32(1 << bit)
            flat[:, neuron] = torch.from_numpy(col.view(np.float32))
            return flat.view(o.shape)

        h = mods[layer].register_forward_hook(flip)
        try:
            with torch.no_grad():
                out = model(x)
        finally:
            h.remove()
        finite = torch.isfinite(out).all(1)
        sdc = int(bool((correct & ((out.argmax(1) != pred) | ~finite)).any()))
        assert (row["sdc"], row["due"]) == (sdc, int(not bool(finite.all()))), row
        assert row["n_faults"] == 1
        sdcs.append(sdc)
    assert 0 < sum(sdcs) < len(sdcs)  # (some flips matter, some do not)
    assert res.plan["population"] == (64 + 10) * 32  # neurons x bits of the linear layers' outputs


def test_single_activation_flip_campaigns_are_sized_per_layer():
    p, _ = hw.plan_campaign("digits-cnn", "digits", ChipSpec.model_validate({
        "schema_version": 1, "name": "t", "format": {"kind": "fp32"},
        "faults": [{"kind": "activation-bitflip", "count": 1, "mode": "persistent"}]}), margin=0.05, by="layer",
        measure=False)
    from hwfault.analyses.campaign.plan import sample_size

    names = [s.name for s in p.strata]
    assert names == ["activation:conv1", "activation:conv2", "activation:fc1", "activation:fc2"]
    for s in p.strata:
        assert s.population == s.sites * 32 and s.trials == sample_size(0.05, 0.95, s.population)


def test_chips_show_names_the_activation_format(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text('schema_version = 1\nname = "t"\n[format]\nkind = "fp32"\n[activations]\nformat = "fp8_e4m3"\n'
                 '[[faults]]\nkind = "activation-bitflip"\nber = 1e-6\n')
    assert main(["chips", "show", str(p)]) == 0
    out = capsys.readouterr().out
    assert "activations: stored as fp8_e4m3" in out and "activation-bitflip" in out
    from hwfault.spec import parse_chip

    spec = parse_chip(p.read_text())
    assert parse_chip(spec.to_toml()) == spec and spec.activations.format == "fp8_e4m3"
