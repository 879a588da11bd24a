"""Hardening: train a model that survives parameter corruption and hardware faults.

Five methods, each a way of choosing the weights at which the training gradient is taken
(Sun et al. 2021, Eq. 13 and 16; Zhang et al. 2021; Stutz et al. 2021):

``crt``       L(w) + lambda ||g||_q, g = dL/dw (Sun et al., Eq. 16; double backprop). q is the dual
              of the corruption norm p (2 for the default L2).
``crt-star``  (1 - alpha) L(w) + alpha L(w + a_hat), a_hat the gradient-based corruption of size eps
              recomputed at every step (Eq. 13; alpha = 1 is SAM). The gradient of the second term
              is taken at w + a_hat without differentiating through a_hat.
``apd``       adversarial parameter defence (Zhang et al.): the average risk over the K-step
              corruption trajectory a_0 = 0, a_{k+1} = Proj(a_k + eta d_k), eta = 1.5 eps / K.
``noise``     hardware-aware training: (1 - alpha) L(w) + alpha L(chip(w)), a fresh fault pattern
              of the chip spec (quantisation, noise, stuck cells, bit errors) at every step.
``randbet``   random bit error training (Stutz et al.): weights clipped to [-w_max, w_max] after
              every step, and the average of the clean gradient and the gradient under random bit
              errors at rate ``ber`` in the chip's integer format (int8 if the chip stores floats), or
              in the chip's block format: element bits, and scale bits too where the chip's bitflip
              faults target scales.

For integer chips (per-tensor or per-channel scales) the model trains with brevitas fake-quantised
weights at the chip's bit width and scale granularity (QAT, a straight-through estimator); for chips
in a block format (FP8, MX, NVFP4, intN with per-group scales: :mod:`hwfault.blockformats`) the chip's
device weights train through :mod:`hwfault.fakequant` (forward: the chip's stored values bit for bit;
backward: straight through). Either way the model that is deployed is the model that was hardened:
the latent float weights are saved, and quantising them with the chip's format gives the trained
weights. With block-format QAT, the crt-star and apd corruptions move the latent weights (the forward
pass quantises ``w + a``, as brevitas does), while the noise and randbet faulty passes read the
chip's faulty stored values as they are (gradient straight through to the latent weights).

Faulty forward passes leave BatchNorm running statistics alone (momentum 0, and restored after the
pass): the statistics the model deploys with are those of its fault-free weights. A fault pattern whose
weights, faulty loss or gradient are not finite gives no faulty gradient (that step is clean).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..constraints import LpBall
from ..devices import device_of
from ..errors import ConstraintError, ModelError, did_you_mean
from ..evaluation import along, model_input, output_of
from ..params import Selection, perturbed, select
from ..search.ascent import iterates
from ..inputs import analysis
from ..tasks import current
from ..training import deterministic, train_epochs

METHODS = ("crt", "crt-star", "apd", "noise", "randbet")
NEEDS_CHIP = ("noise",)

# per-method defaults (eps is an absolute L2 size over all parameters)
DEFAULTS = {
    "crt": {"lam": 0.05},
    "crt-star": {"eps": 0.3, "alpha": 0.5},
    "apd": {"eps": 0.3, "steps": 3},
    "noise": {"alpha": 0.5},
    "randbet": {"alpha": 0.5, "ber": 0.01, "clip": 0.1},
}


@dataclass(frozen=True)
class HardenConfig:
    """How a model is hardened; every field is recorded in the checkpoint's card."""

    method: str
    epochs: int = 10
    eps: float | None = None
    lam: float | None = None
    alpha: float | None = None
    steps: int | None = None
    ber: float | None = None
    clip: float | None = None
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    from_scratch: bool = False
    qat_bits: int | None = None
    qat_per_channel: bool = False
    qat_format: str | None = None  # block-format QAT (hwfault.fakequant): the chip's format name

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConstraintError(f"unknown hardening method '{self.method}'{did_you_mean(self.method, METHODS)}")
        d = DEFAULTS[self.method]
        for k, v in d.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.epochs < 1:
            raise ConstraintError(f"expected --epochs >= 1, got {self.epochs}")
        for name in ("eps", "lam", "ber", "clip"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConstraintError(f"expected --{name if name != 'lam' else 'lambda'} >= 0, got {v}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ConstraintError(f"expected --alpha in [0, 1], got {self.alpha}")
        if self.steps is not None and self.steps < 1:
            raise ConstraintError(f"expected --steps >= 1, got {self.steps}")
        if self.ber is not None and self.ber > 0.5:
            raise ConstraintError(f"expected a bit error rate <= 0.5, got {self.ber}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConstraintError(f"expected --lr > 0 and finite, got {self.lr}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConstraintError(f"expected --batch-size >= 1, got {self.batch_size}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ConstraintError(f"expected --seed >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class HardenResult:
    model: nn.Module
    config: HardenConfig
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    fault_patterns: int = 0   # noise, randbet: the training fault patterns drawn,
    dropped_patterns: int = 0  # and those with non-finite weights, loss or gradient (the step took the clean one)


# ----------------------------------------------------------------------------- gradients


@contextlib.contextmanager
def _frozen_bn(model: nn.Module):
    """BatchNorm layers stop updating their running statistics (for faulty forward passes): momentum 0,
    and the statistics restored on exit (a faulty pass with infinite activations would otherwise leave
    NaN in them: 0 * inf is NaN)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in bns]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mom, bufs in saved:
                m.momentum = mom
                for k, b in bufs.items():
                    getattr(m, k).copy_(b)


def task_loss(model: nn.Module, x, y) -> torch.Tensor:
    """The current task's mean loss of ``model`` on a minibatch (cross-entropy for classification,
    next-token cross-entropy for ``lm``, MSE for ``regression``), differentiable."""
    t = current()
    out = output_of(model, model_input(x, t))  # the minibatch moves to the model's device
    loss, units = t.loss_sum(out, along(y, out))
    return loss / max(units, 1)


def _grads(model, params, x, y, delta=None, sel: Selection | None = None, faulty: bool = False):
    """Loss and d loss / d params at w + delta (delta flat over ``sel``; None: at w)."""
    if delta is None:
        loss = task_loss(model, x, y)
        return loss.detach(), torch.autograd.grad(loss, params)
    with perturbed(sel, delta), (_frozen_bn(model) if faulty else contextlib.nullcontext()):
        loss = task_loss(model, x, y)
        g = torch.autograd.grad(loss, params)
    return loss.detach(), g


def _flat(gs) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


class Trainer:
    """One optimisation step per minibatch for the configured method."""

    def __init__(self, model: nn.Module, cfg: HardenConfig, chip_spec=None, gen: torch.Generator | None = None,
                 fakequant=None):
        self.model, self.cfg, self.spec = model, cfg, chip_spec
        self.fakequant = fakequant  # a hwfault.fakequant.FakeQuantized on model (block-format QAT), or None
        self.patterns = self.dropped = 0  # fault patterns drawn; those that gave no gradient (not finite)
        self.sel = select(model)  # n = k: every parameter, as in the paper's corruption-resistant training
        self.params = list(self.sel.params)
        self.gen = gen or torch.Generator().manual_seed(cfg.seed)
        self.fault_spec = _randbet_spec(chip_spec, cfg.ber) if cfg.method == "randbet" else chip_spec
        if cfg.method in NEEDS_CHIP and chip_spec is None:
            raise ConstraintError(f"--method {cfg.method} needs --chip: it trains with the chip's faults")

    def step(self, x, y) -> float:
        m = self.cfg.method
        if m == "crt":
            loss = task_loss(self.model, x, y)
            g = torch.autograd.grad(loss, self.params, create_graph=True)
            penalty = torch.sqrt(sum((gi * gi).sum() for gi in g))  # ||g||_2 (q = 2 for the L2 ball)
            total = loss + self.cfg.lam * penalty
            grads = torch.autograd.grad(total, self.params)
            self._apply(grads)
            return float(loss.detach())
        loss, g0 = _grads(self.model, self.params, x, y)
        if m == "crt-star":
            a_hat = LpBall(p=2, eps=self.cfg.eps).maximize(_flat(g0))  # Eq. 10 at p = 2, n = k
            _, g1 = _grads(self.model, self.params, x, y, a_hat, self.sel, faulty=True)
            a = self.cfg.alpha
            self._apply([(1 - a) * u + a * v for u, v in zip(g0, g1)])
        elif m == "apd":
            # the average risk over the K-step ascent trajectory a_0 = 0, ..., a_K in the L2 ball of
            # radius eps (step 1.5 eps / K): the multi-step corruption's own loop and geometry
            k, ball = self.cfg.steps, LpBall(p=2, eps=self.cfg.eps)
            step_set = ball.with_eps(1.5 * self.cfg.eps / k)

            def value_and_grad(a):
                gs = g0 if a is None else _grads(self.model, self.params, x, y, a, self.sel, faulty=True)[1]
                return gs, _flat(gs)

            def update(a, g, j):
                return ball.project((0 if a is None else a) + step_set.maximize(g))

            acc = None
            for it in iterates(None, value_and_grad, update, steps=k, check_finite=False):
                acc = [gi.clone() for gi in it.value] if acc is None else [u + v for u, v in zip(acc, it.value)]
            self._apply([u / (k + 1) for u in acc])
        else:  # noise, randbet: a fresh fault pattern of the chip at every step
            sel, delta = _fault_delta(self.fault_spec, self.model, self.gen)
            gmap = dict(zip(self.params, g0))
            self.patterns += 1
            g1 = {}
            if delta is not None and torch.isfinite(delta).all():
                fparams = list(sel.params)
                # the faulty weights are the chip's stored values already: read as they are, not re-quantised
                exact = self.fakequant.exact(fparams) if self.fakequant is not None else contextlib.nullcontext()
                with perturbed(sel, delta), _frozen_bn(self.model), exact:
                    lf = task_loss(self.model, x, y)
                    if torch.isfinite(lf):
                        g1 = dict(zip(fparams, torch.autograd.grad(lf, fparams, allow_unused=True)))
                        if not all(g is None or torch.isfinite(g).all() for g in g1.values()):
                            g1 = {}  # a finite loss can still overflow its gradient (huge faulty weights)
                a = self.cfg.alpha
                # faults touch the device weights only; the rest (biases, norms) see the faulty forward too
                self._apply([(1 - a) * gmap[p] + a * g1[p] if g1.get(p) is not None else gmap[p]
                             for p in self.params])
            else:
                self._apply(g0)
            self.dropped += not g1
        return float(loss)

    def _apply(self, grads) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g.detach() if p.grad is None else p.grad + g.detach()

    def after_step(self) -> None:
        if self.cfg.method == "randbet" and self.cfg.clip:
            with torch.no_grad():
                for p in self.sel.weights_only().params:
                    p.clamp_(-self.cfg.clip, self.cfg.clip)


def _randbet_spec(chip_spec, ber: float):
    """RandBET's training faults: random bit errors at rate ``ber`` in the chip's integer format; for a
    chip in a block format, in its format and on its device weights: the element bits, and the scale
    bits too (at the same rate) if any bitflip fault of the chip targets scales."""
    from ..spec import ChipSpec, parse_chip

    if chip_spec is not None and block_format(chip_spec) is not None:
        scales = any(f.kind == "bitflip" and f.target != "elements" for f in chip_spec.faults)
        return ChipSpec.model_validate({
            **chip_spec.to_dict(), "name": "randbet-training", "references": [],
            "description": f"random bit errors for RandBET in {chip_spec.name}'s format",
            "faults": [{"kind": "bitflip", "ber": ber, "target": "both" if scales else "elements"}]})
    kind, scale = "int8", "per-tensor"
    if chip_spec is not None and chip_spec.format.kind.startswith("int"):
        kind, scale = chip_spec.format.kind, chip_spec.format.scale
    text = (f'schema_version = 1\nname = "randbet-training"\ndescription = "random bit errors for RandBET"\n'
            f'[format]\nkind = "{kind}"\nscale = "{scale}"\n[[faults]]\nkind = "bitflip"\nber = {ber!r}\n')
    return parse_chip(text, "randbet")


def _fault_delta(spec, model: nn.Module, gen: torch.Generator):
    """One fault pattern of ``spec`` on the model's current weights: (selection, flat delta)."""
    from ..faults import Chip

    with torch.no_grad():
        chip = Chip.build(spec, model)
        values = chip.program(gen)
        if chip.transient:
            values = chip.read(values, gen)
        return chip.selection, chip.delta(values)


# ----------------------------------------------------------------------------- QAT


def block_format(spec):
    """The chip's format if it is a block format (FP8, MX, NVFP4, intN per group: a
    :class:`~hwfault.blockformats.StoredBlockFormat`), else None."""
    from ..blockformats import StoredBlockFormat, number_format

    if spec is None:
        return None
    f = spec.format
    fmt = number_format(f.kind, per_channel=f.scale == "per-channel", group=f.group_size)
    return fmt if isinstance(fmt, StoredBlockFormat) else None


def brevitas_qat(spec) -> tuple[int | None, bool]:
    """brevitas QAT: (bits, per channel) for an intN chip with per-tensor or per-channel scales."""
    if spec is None or not spec.format.kind.startswith("int") or block_format(spec) is not None:
        return None, False
    return int(spec.format.kind[3:]), spec.format.scale == "per-channel"


def _copy_back(src: nn.Module, dst: nn.Module) -> None:
    """Latent float weights and buffers of a brevitas model into the float model of the same names."""
    sp, sb = dict(src.named_parameters()), dict(src.named_buffers())
    with torch.no_grad():
        for name, p in dst.named_parameters():
            if name not in sp:
                raise ModelError(f"QAT model lost parameter '{name}'")
            p.copy_(sp[name])
        for name, b in dst.named_buffers():
            if name in sb:
                b.copy_(sb[name])


# ----------------------------------------------------------------------------- entry point


@analysis
def harden(model: nn.Module, data, cfg: HardenConfig, *, chip_spec=None, build: Callable[[], nn.Module] | None = None,
           qat: bool = True, on_epoch: Callable[[int, dict], None] | None = None) -> HardenResult:
    """Harden a copy of ``model`` on the training data ``data`` (a TensorDataset or (x, y)).

    Fine-tunes the given weights; with ``cfg.from_scratch`` a fresh model from ``build`` is trained
    for ``cfg.epochs`` instead. For integer chips training runs through brevitas fake-quantised
    weights, for chips in a block format through :mod:`hwfault.fakequant` on the chip's device weights
    (neither if ``qat`` is False). Returns the float model (eval mode) with the hardened weights.
    """
    from ..evaluation import as_tensors, check_targets, logits

    x, y = as_tensors(data)
    if len(x) == 0:
        raise ModelError("harden: expected training data, got an empty data set")
    check_targets(logits(model, (x[:2], y[:2])), y)  # the outputs fit the targets, every label among them
    bits, per_channel = brevitas_qat(chip_spec) if qat else (None, False)
    block = block_format(chip_spec) if qat else None
    cfg = HardenConfig(**{**cfg.to_dict(), "qat_bits": bits, "qat_per_channel": per_channel,
                          "qat_format": block.name if block is not None else None})
    t0 = time.perf_counter()
    with deterministic():
        torch.manual_seed(cfg.seed)
        if cfg.from_scratch:
            if build is None:
                raise ModelError("--from-scratch needs a zoo architecture (the model's constructor)")
            base = build().to(device_of(model))  # on the device of the model it replaces
        else:
            base = copy.deepcopy(model)
        for p in base.parameters():
            p.requires_grad_(True)
        net = base
        if bits is not None:
            from ..quant import quantize_model

            net = quantize_model(base, bits, per_channel=per_channel)
            for p in net.parameters():
                p.requires_grad_(True)
        fq = None
        if block is not None:
            from ..fakequant import FakeQuantized
            from ..faults import device_selection

            fq = FakeQuantized(base, device_selection(chip_spec, base).params, block)
        with fq if fq is not None else contextlib.nullcontext():
            trainer = Trainer(net, cfg, chip_spec, fakequant=fq)
            opt = torch.optim.AdamW(trainer.params, lr=cfg.lr, weight_decay=0.0 if not cfg.from_scratch else 1e-4)
            steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            gen = torch.Generator().manual_seed(cfg.seed)
            history = train_epochs(net, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, gen=gen, optimizer=opt,
                                   scheduler=sched, step=trainer.step, after_step=trainer.after_step,
                                   on_epoch=on_epoch)
        if net is not base:
            _copy_back(net, base)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return HardenResult(base, cfg, history, time.perf_counter() - t0, trainer.patterns, trainer.dropped)


# ----------------------------------------------------------------------------- report


def summary(d: dict) -> dict:
    """The headline figures of an estimate dict (``hwfault estimate --json``)."""
    return {"clean": d["clean"]["accuracy"], "stored": d["quantized"]["accuracy"],
            "mc_mean": d["random"]["accuracy_mean"], "mc_p01": d["random"]["accuracy_p01"],
            "one_step": d["worst_case"]["one_step"]["accuracy"], "multi_step": d["worst_case"]["multi_step"]["accuracy"]}


def hardening_report(base: nn.Module, hardened: nn.Module, data, chip, *, trials: int = 100, seed: int = 0,
                     steps: int = 10, labels: tuple[str, str] = ("base", "hardened")) -> dict:
    """Base vs hardened on a chip: ``{"base": estimate, "hardened": estimate, "summary": ...}``, each
    estimate with the keys of ``hwfault estimate --json``, measured on the same Monte-Carlo chips."""
    from .estimate import estimate

    out = {}
    for key, model, label in (("base", base, labels[0]), ("hardened", hardened, labels[1])):
        r = estimate((model, label), data, chip, trials=trials, seed=seed, steps=steps, per_fault=False, severities=())
        out[key] = r.to_dict()
    out["summary"] = {k: summary(out[k]) for k in ("base", "hardened")}
    out["summary"]["change"] = {k: out["summary"]["hardened"][k] - out["summary"]["base"][k]
                                for k in out["summary"]["base"]}
    return out


# ----------------------------------------------------------------------------- checkpoints


def source_arch(model_ref: str) -> str | None:
    """The zoo architecture behind a zoo name or hwfault checkpoint; None for ``.pt2`` archives."""
    from pathlib import Path

    from ..zoo import checkpoint_metadata, list_models

    if model_ref in list_models():
        return model_ref
    p = Path(model_ref)
    if p.suffix not in (".safetensors", ".pt2", ".onnx"):
        from ..inputs import load_model

        load_model(p)  # a missing file, a pickle or an unknown type: load_model's own one-line error
    if p.suffix == ".safetensors":
        return checkpoint_metadata(p)["arch"]
    if p.suffix == ".pt2":
        return None
    raise ModelError(f"{model_ref}: hardening needs a torch model (zoo name, .safetensors or .pt2), "
                     f"not a '{p.suffix or 'plain'}' file")


def _batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``example`` (its last row repeated when it has fewer)."""
    if len(example) >= n:
        return example[:n]
    return torch.cat([example, example[-1:].expand(n - len(example), *example.shape[1:])])


def save_hardened(model: nn.Module, out, *, arch: str | None, card: dict, example: torch.Tensor):
    """Write the hardened model: an hwfault safetensors checkpoint (zoo architectures) or a
    torch.export ``.pt2`` archive (user models), plus a Markdown card beside it."""
    import json
    from pathlib import Path

    from ..files import atomic_write, write_text
    from ..report.labels import REPORT_KEYS
    from ..zoo import save_checkpoint

    out = Path(out)
    if arch is not None:
        if out.suffix != ".safetensors":
            raise ConstraintError(f"--out {out}: expected a .safetensors path for a zoo architecture")
        save_checkpoint(model, out, arch=arch, meta=card)
    else:
        if out.suffix != ".pt2":
            raise ConstraintError(f"--out {out}: expected a .pt2 path for a torch.export model")
        from ..pt2 import FixedBatchModule

        if isinstance(model, FixedBatchModule):  # a fixed-batch archive stays one, at its own batch size
            ep = torch.export.export(model.program, (_batch_of(example, model.batch_size),))
        else:
            batch = torch.export.Dim("batch", min=1)
            ep = torch.export.export(model, (example[:2],), dynamic_shapes=({0: batch},))
        atomic_write(out, lambda t: torch.export.save(ep, str(t)), what="--out")
    s = (card.get("report") or {}).get("summary")
    lines = [f"# Hardened model: {out.stem}", "",
             f"{card['method']} hardening of `{card['base_model']}` on `{card['data']}`"
             + (f" for chip `{card['chip']}`" if card.get("chip") else "") + ".", "",
             "| field | value |", "|---|---|",
             f"| test accuracy | {100 * card['test_accuracy']:.2f}% (base {100 * card['base_test_accuracy']:.2f}%) |",
             f"| settings | `{json.dumps(card['config'], sort_keys=True)}` |",
             f"| training time | {card['train_seconds']} s |", f"| command | `{card['command']}` |", ""]
    if card.get("trained_on_evaluation_data"):
        lines += ["**Trained on the evaluation data** (`--train-on-eval`: the data have no train split), so the "
                  "test accuracy above is on data the model has seen.", ""]
    if s:
        lines += ["| on the chip (accuracy %) | base | hardened |", "|---|--:|--:|"]
        lines += [f"| {label} | {100 * s['base'][k]:.1f} | {100 * s['hardened'][k]:.1f} |" for k, label in REPORT_KEYS]
        lines.append("")
    lines.append(f'Load: `hwfault.load_model("{out.name}")`; every command takes it as `--model {out.name}`.')
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n", what="model card")
    return out
