"""The chip bracket for every shipped preset on one zoo model: clean, Monte-Carlo and worst case.

    .venv/bin/python bench/estimate_presets.py [--model digits-cnn] [--trials 100]

Writes bench/results/estimate_presets.json, a Markdown table (estimate_presets.md) and, for each
preset, the HTML-free Markdown report with its figure (estimate_<model>_<chip>.md/.png).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import hwfault
from hwfault import report, zoo
from hwfault.analyses.estimate import estimate
from hwfault.spec import list_chips

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-cnn")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chips", default=",".join(list_chips()))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for chip in args.chips.split(","):
        print(f"{chip} ...", file=sys.stderr, flush=True)
        r = estimate(args.model, zoo.get_entry(args.model).data, chip, trials=args.trials, seed=args.seed)
        report.write_report(r, OUT / f"estimate_{args.model}_{chip}.md")
        d = r.to_dict()
        w, mc = d["worst_case"], d["random"]
        rows.append({"chip": chip, "format": d["chip"]["format"], "clean": d["clean"]["accuracy"],
                     "stored": d["quantized"]["accuracy"], "mc_mean": mc["accuracy_mean"],
                     "mc_ci95": mc["accuracy_ci95"], "mc_p01": mc["accuracy_p01"], "mc_min": mc["accuracy_min"],
                     "one_step": w["one_step"]["accuracy"], "multi_step": w["multi_step"]["accuracy"],
                     "bit_search": w.get("bit_search", {}).get("accuracy"),
                     "flips": w.get("bit_search", {}).get("flips"), "seconds": d["seconds"]})
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"Model `{args.model}`, {args.trials} Monte-Carlo chips per preset, coverage 0.999 (accuracy %).", "",
             "| chip | format | clean | stored | MC mean [95% CI] | MC p01 | MC min | one step | multi-step | bit search (flips) | s |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lo, hi = r["mc_ci95"]
        bs = "-" if r["bit_search"] is None else f"{pct(r['bit_search'])} ({r['flips']})"
        lines.append(f"| {r['chip']} | {r['format']} | {pct(r['clean'])} | {pct(r['stored'])} | "
                     f"{pct(r['mc_mean'])} [{pct(lo)}, {pct(hi)}] | {pct(r['mc_p01'])} | {pct(r['mc_min'])} | "
                     f"{pct(r['one_step'])} | {pct(r['multi_step'])} | {bs} | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    (OUT / "estimate_presets.md").write_text(table + "\n")
    report.write_json({"model": args.model, "trials": args.trials, "rows": rows,
                       "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                   "threads": torch.get_num_threads()},
                       "seconds": round(time.perf_counter() - t0, 1)}, OUT / "estimate_presets.json")


if __name__ == "__main__":
    main()
