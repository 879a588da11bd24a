"""Table 1 of Sun et al. (AAAI 2021) on the zoo: random vs gradient-based L2 parameter corruption.

For each model, n = k (all parameters) and n = 100, and each eps: accuracy under the one-step
gradient corruption (Eq. 10), the mean over --trials random corruptions (Eq. 5) of the same norm and
sparsity, and the multi-step corruption. Writes JSON and markdown; prints the markdown to stdout.

    .venv/bin/python bench/seed_table1.py [--models digits-cnn,...] [--eps 0.01,0.1,1] [--trials 10]
"""

from __future__ import annotations

import argparse
import time

import hwfault
from hwfault.report import write_json

from _common import RESULTS, add_common_args, data_of, log, machine, md_table, setup, write_md

NS = (None, 100)  # None = n = k, all parameters
MAIN, EXTRA = ("random", "gradient"), ("multistep",)


def cell(acc: float, clean: float) -> str:
    """Paper style: accuracy (change), or '*' when the change is under 0.1 points."""
    change = round(100 * (acc - clean), 6)
    return "*" if abs(change) < 0.1 else f"{100 * acc:.1f} ({change:+.1f})"


def table(sweeps: dict, models: list[str], eps: list[float], methods: tuple[str, ...]) -> str:
    header = ["setting"] + [f"{m} {meth}" for m in models for meth in methods]
    rows = [["w/o corruption"] + [f"{100 * sweeps[m, None].clean['accuracy']:.1f}" for m in models for _ in methods]]
    for n in NS:
        for e in eps:
            rows.append([f"n={'k' if n is None else n}, eps={e:g}"] + [
                cell(sweeps[m, n].method(meth)[e].accuracy, sweeps[m, n].clean["accuracy"])
                for m in models for meth in methods])
    return md_table(header, rows)


def anomalies(sweeps: dict, eps: list[float]) -> list[str]:
    """Settings that break the paper's ordering (gradient at least as damaging as random; multistep as gradient)."""
    out = []
    for (m, n), r in sweeps.items():
        for e in eps:
            rnd, grd, mst = (r.method(x)[e].accuracy for x in ("random", "gradient", "multistep"))
            where = f"{m}, n={'k' if n is None else n}, eps={e:g}"
            if rnd < grd - 0.005:
                out.append(f"{where}: random ({100 * rnd:.1f}) more damaging than gradient ({100 * grd:.1f})")
            if mst > grd:
                out.append(f"{where}: multistep ({100 * mst:.1f}) less damaging than gradient ({100 * grd:.1f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, models=",".join(hwfault.list_models()), eps="1e-3,1e-2,0.1,0.3,1,3,10,30",
                    out=RESULTS / "table1.json")
    ap.add_argument("--trials", type=int, default=10, help="random corruptions per eps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = setup(ap, args)

    sweeps = {}
    for m in args.models:
        for n in NS:
            t = time.perf_counter()
            r = hwfault.sweep(m, data_of(m), epsilons=args.eps, norm=2, n=n, methods=MAIN + EXTRA,
                              trials=args.trials, seed=args.seed)
            sweeps[m, n] = r
            log(f"[table1] {m:20s} n={'k=' + str(r.k) if n is None else n:<8} "
                f"clean {100 * r.clean['accuracy']:.1f}%  {time.perf_counter() - t:5.1f}s")

    seconds, mach = time.perf_counter() - t0, machine()
    notes = anomalies(sweeps, args.eps)
    md = "\n\n".join([
        f"# Table 1 (shape): random vs gradient-based corruption, L2 norm\n\n"
        f"Accuracy % under corruption (change vs clean in points); `*` = change < 0.1 points. "
        f"Random = mean of {args.trials} trials (seed {args.seed}). k = all parameters of the model "
        f"({', '.join(f'{m}: {sweeps[m, None].k:,}' for m in args.models)}).",
        table(sweeps, args.models, args.eps, MAIN),
        "## Multi-step corruption (10 steps, step 1.5 eps / 10, best iterate)",
        table(sweeps, args.models, args.eps, EXTRA),
        "## Ordering checks\n\n" + ("\n".join(f"- {s}" for s in notes) if notes else
                                    "- gradient is at least as damaging as random, and multistep as gradient, everywhere."),
        f"Total time {seconds:.0f} s; {mach['platform']}, torch {mach['torch']}, "
        f"{args.threads} thread(s).",
    ])
    write_json({"machine": mach, "seconds": round(seconds, 1),
                "settings": {"norm": 2, "eps": args.eps, "n": ["k" if n is None else n for n in NS],
                             "trials": args.trials, "seed": args.seed, "methods": list(MAIN + EXTRA)},
                "clean": {m: sweeps[m, None].clean | {"k": sweeps[m, None].k} for m in args.models},
                "anomalies": notes,
                "sweeps": [r.to_dict() for r in sweeps.values()]}, args.out)
    write_md(args.out.with_suffix(".md"), md)
    print(md)
    log(f"[table1] wrote {args.out} and {args.out.with_suffix('.md')} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
