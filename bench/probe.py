"""Vulnerability probe of Sun et al. (AAAI 2021, Fig. 4): gradient corruption restricted to one group.

For each model, L-inf gradient-based corruption of at most n parameters inside each component type
(n = 10, as Fig. 4a-b) and inside each layer (n = 100, as Fig. 4c-f), at several eps. Groups are
ranked at every eps where they differ (spread >= 1 point): most vulnerable = lowest accuracy, then
highest loss change. Checks the paper's finding that normalisation layers are the most vulnerable
component, and (per layer) whether lower layers are more vulnerable.

    .venv/bin/python bench/probe.py [--models digits-cnn,...] [--eps 0.1,1] [--n 10] [--n-layer 100]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import hwfault
from hwfault.report import plot_probe, write_json

from _common import RESULTS, add_common_args, data_of, log, machine, md_table, setup, write_md

SPREAD = 0.01  # an eps ranks the groups only if their accuracies span at least 1 point


def _finite_or_inf(v: float) -> float:
    """A NaN loss change (diverged logits) counts as the largest."""
    return v if v is not None and not math.isnan(v) else math.inf


def rank_groups(rows: list[dict], groups: list[str], eps: list[float]) -> tuple[dict, list[float]]:
    """Mean rank per group (1 = most vulnerable) over the informative eps, and those eps."""
    at = {(r["group"], r["eps"]): r for r in rows}
    per_eps, used = [], []
    for e in eps:
        accs = [at[g, e]["accuracy"] for g in groups]
        if max(accs) - min(accs) < SPREAD:
            continue
        order = sorted(groups, key=lambda g: (at[g, e]["accuracy"], -_finite_or_inf(at[g, e]["loss_change"])))
        per_eps.append({g: order.index(g) + 1 for g in groups})
        used.append(e)
    mean = {g: float(np.mean([r[g] for r in per_eps])) if per_eps else math.nan for g in groups}
    return mean, used


def rms_weights(model: str, by: str) -> dict[str, float]:
    """Root-mean-square parameter value per group: the scale an absolute L-inf eps is compared with."""
    groups = hwfault.select(hwfault.load_model(model)).groups(by)
    return {g: float(s.values().double().pow(2).mean().sqrt()) for g, s in groups.items()}


def table(res, mean: dict, rms: dict) -> str:
    d = res.to_dict()
    at = {(r["group"], r["eps"]): r for r in d["groups"]}
    header = [d["by"], "params", "n", "rms w"] + [f"eps={e:g}" for e in res.epsilons] + ["mean rank"]
    rows = [[g, f"{at[g, res.epsilons[0]]['numel']:,}", at[g, res.epsilons[0]]["n_effective"], f"{rms[g]:.3g}"]
            + [f"{100 * at[g, e]['accuracy']:.1f}" for e in res.epsilons] + [f"{mean[g]:.2f}"]
            for g in res.groups]
    return md_table(header, rows, ["---"] + ["--:"] * (len(header) - 1))


def verdict_component(model: str, mean: dict, used: list[float]) -> str:
    if not used:
        return f"{model}: no eps separates the components; widen --eps."
    order = sorted(mean, key=mean.get)
    where = f"(mean rank over eps {', '.join(f'{e:g}' for e in used)}; order: " \
            + ", ".join(f"{g} {mean[g]:.2f}" for g in order) + ")"
    if "norm" not in mean:
        return f"{model}: no normalisation layers; most vulnerable: {order[0]} {where}"
    best = mean["norm"] == min(mean.values())
    tie = best and sum(v == mean["norm"] for v in mean.values()) > 1
    state = "HOLDS (tied)" if tie else "HOLDS" if best else \
        f"DOES NOT HOLD: norm ranks {order.index('norm') + 1} of {len(order)}, {order[0]} is most vulnerable"
    return f"{model}: 'normalisation layers are the most vulnerable component' {state} {where}"


def verdict_layer(model: str, res, mean: dict) -> str:
    """Spearman correlation of layer position with mean rank: > 0 means lower layers are more vulnerable."""
    pos = np.arange(len(res.groups))
    r = np.argsort(np.argsort([mean[g] for g in res.groups]))
    rho = float(np.corrcoef(pos, r)[0, 1]) if len(pos) > 2 else math.nan
    top = sorted(mean, key=mean.get)[:3]
    trend = "lower layers more vulnerable" if rho > 0.3 else "higher layers more vulnerable" if rho < -0.3 else "no clear depth trend"
    return f"{model}: most vulnerable layers {', '.join(top)}; Spearman(depth, mean rank) = {rho:+.2f} ({trend})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, models="digits-cnn,mnist1d-transformer,mnist1d-resnet", eps="0.03,0.1,0.3,1,3,10",
                    out=RESULTS / "probe.json")
    ap.add_argument("--n", type=int, default=10, help="parameters corrupted per component type (paper: 10)")
    ap.add_argument("--n-layer", type=int, default=100, help="parameters corrupted per layer (paper: 100)")
    args = ap.parse_args()
    t0 = setup(ap, args)

    out, md, verdicts = [], [], []
    for m in args.models:
        for by, n in (("component", args.n), ("layer", args.n_layer)):
            t = time.perf_counter()
            res = hwfault.probe(m, data_of(m), epsilons=args.eps, by=by, norm="inf", n=n)
            mean, used = rank_groups(res.to_dict()["groups"], res.groups, res.epsilons)
            png = args.out.parent / f"probe_{m}_{by}.png"
            plot_probe(res, png)
            line = verdict_component(m, mean, used) if by == "component" else verdict_layer(m, res, mean)
            verdicts.append(line)
            out.append(res.to_dict() | {"mean_rank": mean, "ranked_eps": used, "verdict": line, "plot": png.name})
            md.append(f"## {m} by {by} (L-inf, n = {n}, clean {100 * res.clean['accuracy']:.1f}%)\n\n"
                      f"Accuracy % under gradient corruption of the group; ![heatmap]({png.name})\n\n"
                      f"{table(res, mean, rms_weights(m, by))}\n\n**Verdict:** {line}")
            log(f"[probe] {m:20s} by {by:9s} n={n:<4} {len(res.groups):2d} groups  {time.perf_counter() - t:5.1f}s")

    seconds, mach = time.perf_counter() - t0, machine()
    text = "\n\n".join([
        "# Vulnerability probe (Sun et al. 2021, Fig. 4)\n\n"
        f"Gradient-based corruption (Eq. 10), L-inf, restricted to one group at a time (budget min(n, group size)); "
        f"'rms w' is the group's root-mean-square parameter value (eps is absolute). Mean rank: 1 = most vulnerable, "
        f"over the eps where the groups' accuracies span >= {100 * SPREAD:g} point.",
        "## Verdicts\n\n" + "\n".join(f"- {v}" for v in verdicts), *md,
        f"Total time {seconds:.0f} s; {mach['platform']}, torch {mach['torch']}, {args.threads} thread(s)."])
    write_json({"machine": mach, "seconds": round(seconds, 1), "settings": {"norm": "inf", "eps": args.eps,
                "n_component": args.n, "n_layer": args.n_layer, "spread": SPREAD}, "verdicts": verdicts,
                "probes": out}, args.out)
    write_md(args.out.with_suffix(".md"), text)
    print(text)
    log(f"[probe] wrote {args.out}, {args.out.with_suffix('.md')} and {len(out)} heatmaps in {seconds:.0f} s")


if __name__ == "__main__":
    main()
