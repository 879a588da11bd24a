"""Fragility per number format: the stored model's score, Monte-Carlo at one BER in the element bits
and in the shared-scale bits separately, and the worst-case element-bit flips to chance.

    .venv/bin/python bench/formats.py [--models digits-cnn,pycode-charlm] [--ber 1e-3] [--chips 10]

For each model of the zoo (the CNN on digits, the character LM on its held-out code) and each format
(fp16, bf16 and int8 as references; FP8, the MX formats, NVFP4 and group-wise int4):

- ``stored``: accuracy (LM: perplexity) with the weights stored in the format, fault-free;
- ``elements`` / ``scales``: the Monte-Carlo mean over ``--chips`` chips of a persistent ``bitflip``
  at ``--ber`` on the element bits only, and on the scale bits only (``target = "scales"``; formats
  without shared scales have none), with the share of chips whose outputs went NaN/Inf (DUE);
- ``flips`` / ``flips_scales``: the progressive bit search's flips to chance (accuracy 0.11; LM: 10x
  the stored perplexity) in the element bits, and in the shared-scale bits (formats with scales), at
  most ``--max-flips`` (default 20; None: not reached), for the models in ``--flips`` (default both);
  the LM's search runs on its first ``--flips-inputs`` windows (default 20), the CNN's on all inputs.

Writes bench/results/formats.json, formats.md and formats.png (format x fragility) and prints the
table. Chips are seeded from (seed, chip index), so a rerun gives the same figures.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

import hwfault as hw
from hwfault.evaluation import evaluate
from hwfault.faults import Chip
from hwfault.params import perturbed
from hwfault.rng import trial_seed
from hwfault.spec import ChipSpec

OUT = Path(__file__).resolve().parent / "results"
FORMATS = [("fp16", None), ("bf16", None), ("int8", None), ("fp8_e4m3", None), ("fp8_e5m2", None),
           ("mxfp8_e4m3", None), ("mxfp8_e5m2", None), ("mxfp6_e2m3", None), ("mxfp6_e3m2", None), ("mxfp4", None),
           ("mxint8", None), ("nvfp4", None), ("int4", 32), ("int4", 128)]
SCALED = {"fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4"}


def _spec(kind: str, group, faults) -> ChipSpec:
    fmt = {"kind": kind} if group is None else {"kind": kind, "scale": "per-group", "group_size": group}
    return ChipSpec.model_validate({"schema_version": 1, "name": "bench", "format": fmt, "faults": faults})


def _data(model: str, n: int | None):
    from torch.utils.data import Subset

    task = hw.zoo.model_task(model)
    d = hw.load_data(hw.zoo.model_data(model), task=task)
    return (Subset(d, range(min(n, len(d)))) if n else d), task


def _score(model, data, task, chip: Chip, values: torch.Tensor | None) -> tuple[float, bool]:
    with perturbed(chip.selection, chip.delta(chip.view.w_q.double() if values is None else values)):
        r = evaluate(model, data, task=task)
    return r.metric, r.nonfinite > 0


def run_model(name: str, args) -> list[dict]:
    model = hw.load_model(name, requires_grad=False)
    data, task = _data(name, args.inputs if name != "digits-cnn" else None)
    clean = evaluate(model, data, task=task).metric
    rows = []
    for kind, group in FORMATS:
        label = kind if group is None else f"{kind}-g{group}"
        t0 = time.perf_counter()
        print(f"[formats] {name}: {label} ...", file=sys.stderr, flush=True)
        base = Chip.build(_spec(kind, group, []), model)
        stored, _ = _score(model, data, task, base, None)
        row = {"model": name, "format": label, "bits": base.view.bits, "clean": clean, "stored": stored,
               "metric": "perplexity" if task == "lm" else "accuracy"}
        for target in ("elements", "scales"):
            if target == "scales" and kind not in SCALED and group is None:
                row[target] = row[f"{target}_due"] = None
                continue
            chip = Chip.build(_spec(kind, group, [{"kind": "bitflip", "ber": args.ber, "target": target}]), model)
            vals, due = [], 0
            for i in range(args.chips):
                m, nf = _score(model, data, task, chip, chip.program(torch.Generator().manual_seed(trial_seed(0, i))))
                vals.append(m if math.isfinite(m) else (math.inf if task == "lm" else 0.0))
                due += nf
            row[target] = sum(vals) / len(vals)
            row[f"{target}_due"] = due / args.chips
        row["flips"] = row["flips_scales"] = None
        if name in args.flips.split(","):
            until = {"until": 0.11} if task != "lm" else {"until_factor": 10.0}
            sdata = data if task != "lm" else _data(name, args.flips_inputs)[0]
            for target, key in (("elements", "flips"), ("scales", "flips_scales")):
                if target == "scales" and row["scales"] is None:
                    continue
                b = hw.bits(model, sdata, format=kind, group=group, max_flips=args.max_flips, random_runs=1,
                            target=target, **until)
                row[key] = b.flips
        row["flips_searched"], row["max_flips"] = name in args.flips.split(","), args.max_flips
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    return rows


def _num(v, metric: str) -> str:
    if v is None:
        return "-"
    if metric == "accuracy":
        return f"{100 * v:.1f}"
    return "inf" if math.isinf(v) else (f"{v:.2f}" if v < 1000 else f"{v:.2g}")


def table(rows: list[dict], ber: float, chips: int) -> str:
    out = [f"Monte-Carlo: {chips} chips per cell at BER {ber:g}, element bits and scale bits separately "
           "(DUE: share of chips with NaN/Inf outputs). Flips: worst-case flips to chance (accuracy 11%; "
           "LM: 10x the stored perplexity) in the element bits and in the scale bits.", "",
           "| model | format | bits | stored | MC, element bits (DUE) | MC, scale bits (DUE) | element flips to chance "
           "| scale flips to chance |",
           "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        m = r["metric"]
        el = f"{_num(r['elements'], m)} ({100 * r['elements_due']:.0f}%)"
        sc = "-" if r["scales"] is None else f"{_num(r['scales'], m)} ({100 * r['scales_due']:.0f}%)"
        flips = (f"> {r['max_flips']}" if r["flips"] is None else r["flips"]) if r["flips_searched"] else "not searched"
        sflips = "-" if r["scales"] is None else (f"> {r['max_flips']}" if r.get("flips_scales") is None else
                                                  r["flips_scales"]) if r["flips_searched"] else "not searched"
        out.append(f"| {r['model']} | {r['format']} | {r['bits']} | {_num(r['stored'], m)} | {el} | {sc} | {flips} "
                   f"| {sflips} |")
    return "\n".join(out) + "\n"


def figure(rows: list[dict], path: Path, ber: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 7), squeeze=False)
    for j, name in enumerate(models):
        rs = [r for r in rows if r["model"] == name]
        x = range(len(rs))
        lm = rs[0]["metric"] == "perplexity"
        ax = axes[0][j]
        el = [r["elements"] for r in rs]
        sc = [r["scales"] if r["scales"] is not None else float("nan") for r in rs]
        if lm:
            el = [min(v, 1e4) for v in el]
            sc = [min(v, 1e4) if v == v else v for v in sc]
        ax.bar([i - 0.2 for i in x], el, 0.4, label="element bits")
        ax.bar([i + 0.2 for i in x], sc, 0.4, label="scale bits")
        ax.plot(list(x), [r["stored"] for r in rs], "k_", markersize=14, label="stored, fault-free")
        ax.set(title=f"{name}: Monte-Carlo at BER {ber:g}", ylabel="perplexity (log)" if lm else "accuracy")
        if lm:
            ax.set_yscale("log")
        ax.set_xticks(list(x), [r["format"] for r in rs], rotation=60, ha="right")
        ax.legend(fontsize=8)
        bx = axes[1][j]
        if not rs[0]["flips_searched"]:
            bx.set_axis_off()
            continue
        flips = [r["flips"] if r["flips"] is not None else r["max_flips"] for r in rs]
        bx.bar([i - 0.2 for i in x], flips, 0.4, color=["C3" if r["flips"] is None else "C0" for r in rs],
               label="element bits")
        sf = [(r["flips_scales"] if r["flips_scales"] is not None else r["max_flips"]) if r["scales"] is not None
              else float("nan") for r in rs]
        bx.bar([i + 0.2 for i in x], sf, 0.4, color=["C3" if r["flips_scales"] is None else "C1" for r in rs],
               label="scale bits")
        bx.set(title=f"worst-case flips to chance (red: not reached in {rs[0]['max_flips']})", ylabel="flips",
               yscale="log")
        bx.legend(fontsize=8)
        bx.set_xticks(list(x), [r["format"] for r in rs], rotation=60, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits-cnn,pycode-charlm")
    ap.add_argument("--ber", type=float, default=1e-3)
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--inputs", type=int, default=200, help="LM windows evaluated (the CNN uses all its test inputs)")
    ap.add_argument("--flips", default="digits-cnn,pycode-charlm", help="the models whose flips to chance are searched")
    ap.add_argument("--flips-inputs", type=int, default=20, help="LM windows the bit search runs on")
    ap.add_argument("--max-flips", type=int, default=20, help="the bit search's budget (flips to chance beyond it: not reached)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for name in args.models.split(","):  # the files are rewritten after each model: a stopped run keeps what it did
        rows += run_model(name, args)
        md = table(rows, args.ber, args.chips)
        meta = {"ber": args.ber, "chips": args.chips, "inputs_lm": args.inputs, "max_flips": args.max_flips,
                "flips_inputs_lm": args.flips_inputs,
                "seconds": round(time.perf_counter() - t0, 1), "python": platform.python_version(),
                "torch": torch.__version__, "hwfault": hw.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for fname, text in (("formats.md", md), ("formats.json", json.dumps({"settings": meta, "rows": rows}, indent=1))):
            tmp = OUT / (fname + ".tmp")
            tmp.write_text(text)
            tmp.replace(OUT / fname)
        figure(rows, OUT / "formats.png", args.ber)
    print(md)


if __name__ == "__main__":
    main()
