"""Table 1 of Sun et al. (AAAI 2021) on the zoo: random vs gradient-based L2 parameter corruption.

For each model, n = k (all parameters) and n = 100, and each eps: accuracy under the one-step
gradient corruption (Eq. 10), the mean over --trials random corruptions (Eq. 5) of the same norm and
sparsity, and the multi-step corruption. Language models (task ``lm``, e.g. ``pycode-charlm``) get
the paper's language-model row: log-perplexity (mean next-token cross-entropy, nats) instead of
accuracy. Writes JSON and markdown; prints the markdown to stdout.

    .venv/bin/python bench/seed_table1.py [--models digits-cnn,...] [--eps 0.01,0.1,1] [--trials 10]
"""

from __future__ import annotations

import argparse
import time

import hwfault
from hwfault import zoo
from hwfault.report import write_json

from _common import RESULTS, add_common_args, data_of, log, machine, md_table, setup, write_md

NS = (None, 100)  # None = n = k, all parameters
MAIN, EXTRA = ("random", "gradient"), ("multistep",)


def cell(acc: float, clean: float) -> str:
    """Paper style: accuracy (change), or '*' when the change is under 0.1 points."""
    change = round(100 * (acc - clean), 6)
    return "*" if abs(change) < 0.1 else f"{100 * acc:.1f} ({change:+.1f})"


def lm_cell(loss: float, clean: float) -> str:
    """Log-perplexity (change), '*' when the change is under 0.01 nats (the paper's LM column)."""
    change = loss - clean
    return "*" if abs(change) < 0.01 else f"{loss:.2f} ({change:+.2f})"


def table(sweeps: dict, models: list[str], eps: list[float], methods: tuple[str, ...], lm: bool = False) -> str:
    header = ["setting"] + [f"{m} {meth}" for m in models for meth in methods]
    key = "loss" if lm else "accuracy"
    fmt = (lambda v: f"{v:.2f}") if lm else (lambda v: f"{100 * v:.1f}")
    rows = [["w/o corruption"] + [fmt(sweeps[m, None].clean[key]) for m in models for _ in methods]]
    for n in NS:
        for e in eps:
            rows.append([f"n={'k' if n is None else n}, eps={e:g}"] + [
                (lm_cell if lm else cell)(getattr(sweeps[m, n].method(meth)[e], key), sweeps[m, n].clean[key])
                for m in models for meth in methods])
    return md_table(header, rows)


def anomalies(sweeps: dict, eps: list[float]) -> list[str]:
    """Settings that break the paper's ordering (gradient at least as damaging as random; multistep as gradient)."""
    out = []
    for (m, n), r in sweeps.items():
        for e in eps:
            where = f"{m}, n={'k' if n is None else n}, eps={e:g}"
            if r.to_dict()["task"]["name"] == "lm":  # log-perplexity: higher is more damaging
                rnd, grd, mst = (r.method(x)[e].loss for x in ("random", "gradient", "multistep"))
                if rnd > grd + 1e-3:
                    out.append(f"{where}: random ({rnd:.3f} nats) more damaging than gradient ({grd:.3f})")
                if mst < grd - 1e-9:
                    out.append(f"{where}: multistep ({mst:.3f} nats) less damaging than gradient ({grd:.3f})")
                continue
            rnd, grd, mst = (r.method(x)[e].accuracy for x in ("random", "gradient", "multistep"))
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
                f"clean {100 * r.clean['accuracy']:.1f}% (loss {r.clean['loss']:.3f})  {time.perf_counter() - t:5.1f}s")

    seconds, mach = time.perf_counter() - t0, machine()
    notes = anomalies(sweeps, args.eps)
    lms = [m for m in args.models if zoo.model_task(m) == "lm"]
    cls = [m for m in args.models if m not in lms]
    lm_part = [
        "## Language model: log-perplexity (nats per token) under corruption\n\n"
        "The paper's language-model row (Table 1 reports log-perplexity for its LSTM language model): mean "
        "next-token cross-entropy on the test split (change vs clean); `*` = change < 0.01 nats.",
        table(sweeps, lms, args.eps, MAIN + EXTRA, lm=True)] if lms else []
    cls_part = [
        table(sweeps, cls, args.eps, MAIN),
        "## Multi-step corruption (10 steps, step 1.5 eps / 10, best iterate)",
        table(sweeps, cls, args.eps, EXTRA)] if cls else []
    md = "\n\n".join([
        f"# Table 1 (shape): random vs gradient-based corruption, L2 norm\n\n"
        + ("Accuracy % under corruption (change vs clean in points); `*` = change < 0.1 points. " if cls else "")
        + f"Random = mean of {args.trials} trials (seed {args.seed}). k = all parameters of the model "
        f"({', '.join(f'{m}: {sweeps[m, None].k:,}' for m in args.models)}).",
        *cls_part,
        *lm_part,
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
