"""``hwfault harden`` as one call: harden a model, compare it with its base on the chip, and write the
hardened checkpoint with its card.

    run = hw.harden_checkpoint("digits-cnn", "digits", hw.HardenConfig(method="noise"), chip="rram-4bit",
                               out="cnn-hard.safetensors")
    run.report["summary"]["change"]["mc_mean"]      # Monte-Carlo mean accuracy gained on the chip
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import has_split, load_data
from ..devices import to_device
from ..errors import HwfaultError
from ..evaluation import EvalResult, evaluate
from ..files import check_output
from ..inputs import analysis, load_model
from ..tasks import current
from ..spec import load_chip
from ..zoo import get_entry
from .harden import (HardenConfig, HardenResult, brevitas_qat, harden, hardening_report, save_hardened,
                     source_arch)


@dataclass(frozen=True)
class HardenRun:
    """What :func:`harden_checkpoint` did: the training result, the base and hardened test scores, the
    base-vs-hardened report on the chip (None without a chip), the card and where the checkpoint went."""

    result: HardenResult
    base: EvalResult
    hardened: EvalResult
    report: dict | None
    card: dict
    out: Path


@analysis
def harden_checkpoint(model: str, data: str, cfg: HardenConfig, *, out: str | Path, chip=None, qat: bool = True,
                      trials: int = 100, train_on_eval: bool = False, command: str | None = None,
                      on_epoch: Callable[[int, dict], None] | None = None,
                      on_note: Callable[[str], None] | None = None, device=None) -> HardenRun:
    """Harden ``model`` (a zoo name, an hwfault checkpoint or a ``.pt2`` archive) on the train split of
    ``data`` and write it to ``out`` (``.safetensors`` for zoo architectures, ``.pt2`` for torch.export
    models) with a model card. With ``chip``, the base and hardened models are compared on it over
    ``trials`` Monte-Carlo chips (the same chips for both) and the comparison goes on the card.

    Data without a train split are refused unless ``train_on_eval`` (then the card says so). For an
    intN chip the model trains through brevitas QAT unless ``qat`` is False; a ``.pt2`` model, which has
    no Linear/Conv modules for brevitas, trains float weights (a note says so). A chip in a block format
    (FP8, MX, NVFP4, intN per group) trains through :mod:`hwfault.fakequant`, ``.pt2`` models too.
    ``device``: where the models train and are evaluated (:mod:`hwfault.devices`); the checkpoint is
    written from the CPU."""
    note = on_note or (lambda msg: None)
    arch = source_arch(model)
    out = check_output(out, what="--out", suffixes=(".safetensors",) if arch is not None else (".pt2",))
    spec = load_chip(chip) if chip is not None else None
    base = to_device(load_model(model, requires_grad=False), device)
    test = load_data(data, "test")          # a data file that is bad says so before anything about its splits
    base_eval = evaluate(base, test)        # and data that do not fit the model too
    own_split = has_split(data, "train")
    if not own_split:
        if not train_on_eval:
            raise HwfaultError(f"{data} has no train split (arrays x_train and y_train): hardening would train on "
                               f"the evaluation data; add them, or pass --train-on-eval to do so knowingly")
        note(f"{data} has no train split: training on the evaluation data (--train-on-eval); the test accuracy "
             f"below is on data the model trained on")
    train = load_data(data, "train")
    if qat and brevitas_qat(spec)[0] is not None and isinstance(base, torch.fx.GraphModule):
        note("a torch.export model has no Linear/Conv modules for brevitas; training float weights (--no-qat)")
        qat = False
    result = harden(base, train, cfg, chip_spec=spec, qat=qat, build=get_entry(arch).build if arch else None,
                    on_epoch=on_epoch)
    if result.dropped_patterns * 2 > result.fault_patterns:
        note(f"{result.dropped_patterns} of {result.fault_patterns} training fault patterns gave weights, a loss or "
             f"a gradient that are not finite (e.g. a flipped high exponent bit of a shared scale); those steps "
             f"took the clean gradient only" + (" (a lower --ber trains on more of them)" if cfg.method == "randbet"
                                                else ""))
    hard_eval = evaluate(result.model, test)
    rep = None
    if spec is not None:
        rep = hardening_report(base, result.model, test, spec, trials=trials, seed=cfg.seed, labels=(model, out.name))
    card = {"method": cfg.method, "base_model": model, "data": data, "chip": spec.name if spec else None,
            "config": result.config.to_dict(), "test_accuracy": hard_eval.accuracy,
            "base_test_accuracy": base_eval.accuracy, "task": current().name, "test": hard_eval.row(),
            "base_test": base_eval.row(), "train_seconds": round(result.seconds, 1),
            "trained_on_evaluation_data": not own_split, "history": result.history,
            "command": command or f"hwfault harden --model {model} --method {cfg.method}",
            "report": {"summary": rep["summary"]} if rep else None}
    save_hardened(result.model.cpu(), out, arch=arch, card=card, example=test.tensors[0])
    return HardenRun(result, base_eval, hard_eval, rep, card, out)
