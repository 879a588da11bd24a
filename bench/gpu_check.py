"""The same campaign on the CPU and on the GPU: same faults, same verdicts, and how much faster.

    .venv/bin/python bench/gpu_check.py [--model mnist1d-resnet] [--trials 200] [--device auto]

Runs one fault-injection campaign (default: zoo mnist1d-resnet, 1000 test inputs, preset
fp32-single-bitflip, 200 trials, seed 0) through ``hw.campaign`` twice, with ``device="cpu"`` and
with the GPU (``--device``, default ``auto``: CUDA, else MPS). Checks, trial by trial, that both
injected the same faults (the rows' ``faults`` column: the draws are made on the CPU, so they must
be identical), and reports how many trials' SDC / critical SDC / DUE verdicts differ and the largest
accuracy difference (floating-point round-off of different kernels; a differing SDC verdict means
an output that changes top-1 class by round-off alone), and the trials/s of each (after a short
warm-up campaign on each device). Writes bench/results/gpu_check.json and prints a table.

Without a GPU it says so in one line, runs the CPU path only and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import hwfault as hw
import hwfault.zoo  # noqa: F401  (the package is lazy)
from hwfault.devices import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, log, machine  # noqa: E402

VERDICTS = ("sdc", "critical_sdc", "due")


def run(model: str, chip: str, trials: int, seed: int, device: str) -> dict:
    """A warm-up campaign of a few trials, then the campaign; its rows by trial and its speed."""
    data = hw.zoo.get_entry(model).data
    hw.campaign(model, data, chip, trials=min(10, trials), seed=seed + 1, device=device)  # kernels, caches, CUDA init
    t0 = time.perf_counter()
    r = hw.campaign(model, data, chip, trials=trials, seed=seed, device=device)
    wall = time.perf_counter() - t0
    return {"rows": {row["trial"]: row for row in r.rows}, "trials_per_second": r.trials_per_second,
            "wall_seconds": wall, "golden_accuracy": r.golden_accuracy, "summary": r.summary()["overall"]}


def compare(cpu: dict, gpu: dict) -> dict:
    a, b = cpu["rows"], gpu["rows"]
    common = sorted(set(a) & set(b))
    return {"trials": len(common), "missing": len(set(a) ^ set(b)),
            "same_faults": sum(a[t]["faults"] == b[t]["faults"] and a[t]["n_faults"] == b[t]["n_faults"]
                               for t in common),
            **{f"{k}_differs": sum(int(a[t][k]) != int(b[t][k]) for t in common) for k in VERDICTS},
            "max_accuracy_diff": max((abs(a[t]["accuracy"] - b[t]["accuracy"]) for t in common), default=0.0),
            "golden_accuracy_diff": abs(cpu["golden_accuracy"] - gpu["golden_accuracy"]),
            "speedup": gpu["trials_per_second"] / cpu["trials_per_second"] if cpu["trials_per_second"] else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist1d-resnet")
    ap.add_argument("--chip", default="fp32-single-bitflip")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="the GPU to compare with the CPU (auto, cuda, cuda:N, mps)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = ap.parse_args()
    try:
        gpu_dev = resolve_device(args.device)
    except hw.HwfaultError as e:
        ap.error(str(e))
    out = {"model": args.model, "chip": args.chip, "trials": args.trials, "seed": args.seed, "machine": machine(),
           "cuda": torch.version.cuda, "gpu": None}
    if gpu_dev.type == "cpu":
        log(f"no GPU on this machine (--device {args.device} resolves to the CPU): running the CPU path only")
    elif gpu_dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(gpu_dev)
    else:
        out["gpu"] = gpu_dev.type
    log(f"{args.model} on {args.chip}, {args.trials} trials: cpu ...")
    cpu = run(args.model, args.chip, args.trials, args.seed, "cpu")
    out["cpu"] = {k: v for k, v in cpu.items() if k != "rows"}
    rows = [["cpu", f"{cpu['trials_per_second']:.1f}", f"{cpu['summary']['sdc_rate']:.3f}",
             f"{cpu['summary']['accuracy_mean']:.4f}", "", "", ""]]
    if gpu_dev.type != "cpu":
        log(f"... {gpu_dev} ...")
        gpu = run(args.model, args.chip, args.trials, args.seed, str(gpu_dev))
        out["device"] = str(gpu_dev)
        out["gpu_run"] = {k: v for k, v in gpu.items() if k != "rows"}
        cmp_ = out["comparison"] = compare(cpu, gpu)
        rows.append([str(gpu_dev), f"{gpu['trials_per_second']:.1f}", f"{gpu['summary']['sdc_rate']:.3f}",
                     f"{gpu['summary']['accuracy_mean']:.4f}", f"{cmp_['same_faults']}/{cmp_['trials']}",
                     f"{cmp_['sdc_differs']}/{cmp_['due_differs']}", f"{cmp_['max_accuracy_diff']:.2g}"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    header = ["device", "trials/s", "SDC rate", "mean acc", "same faults", "SDC/DUE differ", "max |d acc|"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for r in [header, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if "comparison" in out:
        c = out["comparison"]
        print(f"speedup {c['speedup']:.2f}x; critical-SDC verdicts differ in {c['critical_sdc_differs']} trials")
    log(f"wrote {args.out}")
    ok = "comparison" not in out or (out["comparison"]["same_faults"] == out["comparison"]["trials"]
                                     and not out["comparison"]["missing"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
