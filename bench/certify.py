"""Certified accuracy under L-inf weight perturbation (Weng et al., AAAI 2020) on the zoo, beside attacks.

For each model and eps (absolute, on the weight tensors of every Linear and Conv layer): certified
accuracy and time of IBP, of CROWN and of CROWN + branch and bound (hwfault.certify, methods ibp,
crown and bab; BaB has --bab-budget seconds per eps), the accuracy left by hwfault's universal
multi-step attack (one perturbation for the whole evaluation set: ``hwfault.multistep``, 10 sign
steps), and by a per-input attack (sign-gradient descent on each input's margin with its own
perturbation). Sound certificates can never exceed either attack; the per-input attack is the
tighter ceiling. Then the peer, auto_LiRPA (IBP and CROWN), on the zoo MLP at the anchor's epsilons,
beside hwfault on the same model, inputs and set (skipped when auto_LiRPA is not installed; ``make
bench`` installs it, see bench/_lirpa.py). Writes JSON and markdown; prints the markdown to stdout.

    .venv/bin/python bench/certify.py [--models digits-mlp,digits-cnn,mnist1d-resnet] [--limit N]
                                      [--bab-budget S] [--no-peer]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

import hwfault
from hwfault import certification as cert
from hwfault.constraints import LpBall
from hwfault.report import write_json

import _lirpa
from _common import RESULTS, data_of, log, machine, md_table, names, setup, write_md

GRIDS = {  # eps grids where each model's curve is informative; inputs (None = the whole test split)
    "digits-mlp": ([1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2], None),
    "digits-cnn": ([3e-5, 1e-4, 2e-4, 3e-4, 5e-4], None),
    "mnist1d-resnet": ([1e-5, 3e-5, 1e-4, 2e-4, 3e-4], 50),
}
PEER_GRID = [1e-3, 3e-3]   # the anchor's epsilons
ANCHOR = ("auto_LiRPA anchor (a digits MLP 64-128-128-10, clean 97.6%, 540 inputs): eps 1e-3: IBP 84.1% in 0.1 s, "
          "CROWN 92.6% in 46 s, universal sign-PGD 96.7%; eps 3e-3: IBP 6.9%, CROWN 70.0% in 47 s, attack 93.1%.")


def per_input_attack(model, x, y, selection, eps: float, steps: int = 20) -> float:
    """Accuracy when every input gets its own L-inf perturbation of the selected weights, found by
    sign-gradient descent on its margin f_y - max_j f_j (from zero and from a random vertex)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    sel = list(selection.names)
    K = model(x[:1]).shape[1]

    def margin(d, xi, yi):
        p = {**params, **{n: params[n] + d[n] for n in sel}}
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))[0]
        onehot = (torch.arange(K) == yi).to(out.dtype)
        return (out * onehot).sum() - (out - 1e9 * onehot).max()

    g_fn, m_fn = vmap(grad(margin)), vmap(margin)
    robust = torch.ones(len(x), dtype=torch.bool)
    for start in ("zero", "random"):
        gen = torch.Generator().manual_seed(0)
        d = {n: (torch.zeros(len(x), *params[n].shape) if start == "zero" else
                 eps * (torch.randint(0, 2, (len(x), *params[n].shape), generator=gen).float() * 2 - 1)) for n in sel}
        for _ in range(steps):
            robust &= m_fn(d, x, y) > 0
            g = g_fn(d, x, y)
            d = {n: (d[n] - eps / 4 * g[n].sign()).clamp(-eps, eps) for n in sel}
        robust &= m_fn(d, x, y) > 0
    return float(robust.double().mean())


def run_model(name: str, grid: list[float], limit: int | None, bab_budget: float) -> dict:
    model = hwfault.load_model(name)
    data = hwfault.load_data(data_of(name), "test")
    x, y = data.tensors
    total = len(x)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    sel = hwfault.select(model, types=["linear", "conv"]).weights_only()
    clean = hwfault.evaluate(model, (x, y)).accuracy
    t = time.perf_counter()
    universal = hwfault.multistep(model, (x, y), LpBall(p=math.inf, eps=1.0), epsilons=grid, selection=sel, steps=10)
    t_universal = time.perf_counter() - t
    rows = []
    for e in grid:
        row = {"eps": e}
        r = cert.certify(model, (x, y), eps=e, params=sel, method="ibp")[e]
        row["ibp"] = {"certified_accuracy": r.certified_accuracy, "seconds": r.seconds,
                      "mean_margin_lower": r.mean_margin_lower}
        # one 'bab' run: its CROWN pass over all inputs, then branch and bound on the correct ones left
        r = cert.certify(model, (x, y), eps=e, params=sel, method="bab", time_budget=bab_budget)[e]
        bab_s = r.extra["bab_seconds"]
        row["crown"] = {"certified_accuracy": r.certified_accuracy - r.extra["bab_certified"] / len(x),
                        "seconds": round(r.seconds - bab_s, 4), "mean_margin_lower": r.mean_margin_lower}
        row["bab"] = {"certified_accuracy": r.certified_accuracy, "seconds": r.seconds, "bab_seconds": bab_s,
                      "bab_inputs": r.extra["bab_inputs"], "bab_certified": r.extra["bab_certified"],
                      "falsified": r.extra["falsified"], "attack_upper_accuracy": r.extra["attack_upper_accuracy"],
                      "budget_seconds": bab_budget}
        t = time.perf_counter()
        row["per_input_attack"] = per_input_attack(model, x, y, sel, e)
        row["per_input_attack_seconds"] = round(time.perf_counter() - t, 2)
        row["universal_attack"] = universal[e].accuracy
        rows.append(row)
        log(f"[certify] {name:15s} eps {e:<8g} IBP {100 * row['ibp']['certified_accuracy']:5.1f}% "
            f"({row['ibp']['seconds']:.2f}s)  CROWN {100 * row['crown']['certified_accuracy']:5.1f}% "
            f"({row['crown']['seconds']:.1f}s)  +BaB {100 * row['bab']['certified_accuracy']:5.1f}% "
            f"({row['bab']['seconds']:.1f}s)  per-input attack {100 * row['per_input_attack']:5.1f}%  "
            f"universal {100 * row['universal_attack']:5.1f}%")
    return {"model": name, "data": data_of(name), "n": len(x), "n_test": total, "clean_accuracy": clean, "k": sel.numel,
            "params": list(sel.names), "universal_attack_seconds": round(t_universal, 1), "rows": rows}


def table(res: dict) -> str:
    header = ["eps", "IBP certified", "IBP s", "CROWN certified", "CROWN s", "CROWN+BaB certified", "CROWN+BaB s",
              "per-input attack", "universal attack"]
    rows = [[f"{r['eps']:g}", f"{100 * r['ibp']['certified_accuracy']:.1f}%", f"{r['ibp']['seconds']:.2f}",
             f"{100 * r['crown']['certified_accuracy']:.1f}%", f"{r['crown']['seconds']:.1f}",
             f"{100 * r['bab']['certified_accuracy']:.1f}%", f"{r['bab']['seconds']:.1f}",
             f"{100 * r['per_input_attack']:.1f}%", f"{100 * r['universal_attack']:.1f}%"] for r in res["rows"]]
    return md_table(header, rows)


def run_peer(grid: list[float]) -> dict | None:
    """auto_LiRPA's IBP and CROWN on the zoo MLP (all Linear weights, absolute L-inf), beside hwfault's
    on exactly the same model, inputs and set."""
    lirpa = _lirpa.load()
    if lirpa is None:
        return None
    model = hwfault.load_model("digits-mlp")
    x, y = hwfault.load_data("digits", "test").tensors
    sel = hwfault.select(model, types=["linear"]).weights_only()
    rows = []
    for e in grid:
        peer = _lirpa.certify_mlp(lirpa, model, x, y, e)
        ours = {}
        for method in ("ibp", "crown"):
            r = cert.certify(model, (x, y), eps=e, params=sel, method=method)[e]
            ours[method] = {"certified_accuracy": r.certified_accuracy, "seconds": r.seconds,
                            "mean_margin_lower": r.mean_margin_lower}
        rows.append({"eps": e, "auto_lirpa": peer, "hwfault": ours,
                     "crown_speedup": round(peer["crown"]["seconds"] / max(ours["crown"]["seconds"], 1e-9), 1)})
        log(f"[certify] auto_LiRPA {lirpa.__version__ if hasattr(lirpa, '__version__') else ''} eps {e:g}: "
            f"CROWN {100 * peer['crown']['certified_accuracy']:.1f}% in {peer['crown']['seconds']:.1f}s vs hwfault "
            f"{100 * ours['crown']['certified_accuracy']:.1f}% in {ours['crown']['seconds']:.2f}s")
    others = {}
    for name in ("digits-cnn", "mnist1d-resnet"):
        m = hwfault.load_model(name)
        xo = hwfault.load_data(data_of(name), "test").tensors[0]
        others[name] = _lirpa.try_weights(lirpa, m, xo, 1e-4) or "ok"
        log(f"[certify] auto_LiRPA on {name} with Linear and Conv weights perturbed: {others[name]}")
    return {"model": "digits-mlp", "n": len(x), "peer": "auto_LiRPA", "peer_version": getattr(lirpa, "__version__", None),
            "rows": rows, "other_models": others}


def peer_table(res: dict) -> str:
    header = ["eps", "IBP certified (auto_LiRPA / hwfault)", "CROWN certified (auto_LiRPA / hwfault)",
              "CROWN mean margin bound (auto_LiRPA / hwfault)", "CROWN s (auto_LiRPA / hwfault)", "speedup"]
    rows = []
    for r in res["rows"]:
        p, o = r["auto_lirpa"], r["hwfault"]
        rows.append([f"{r['eps']:g}",
                     f"{100 * p['ibp']['certified_accuracy']:.1f}% / {100 * o['ibp']['certified_accuracy']:.1f}%",
                     f"{100 * p['crown']['certified_accuracy']:.1f}% / {100 * o['crown']['certified_accuracy']:.1f}%",
                     f"{p['crown']['mean_margin_lower']:.4f} / {o['crown']['mean_margin_lower']:.4f}",
                     f"{p['crown']['seconds']:.1f} / {o['crown']['seconds']:.2f}", f"{r['crown_speedup']:g}x"])
    return md_table(header, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=names, default=list(GRIDS), help="comma-separated zoo names")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N test inputs (default: per model)")
    ap.add_argument("--out", type=Path, default=RESULTS / "certify.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bab-budget", type=float, default=30.0, help="seconds of branch and bound per eps")
    ap.add_argument("--no-peer", action="store_true", help="skip the auto_LiRPA comparison")
    args = ap.parse_args()
    t0 = setup(ap, args)
    results = []
    for m in args.models:
        grid, limit = GRIDS.get(m, ([1e-4, 1e-3], None))
        results.append(run_model(m, grid, args.limit if args.limit is not None else limit, args.bab_budget))
    peer = None if args.no_peer else run_peer(PEER_GRID)
    seconds, mach = time.perf_counter() - t0, machine()
    parts = ["# Certified accuracy under L-inf weight perturbation\n\n"
             "Weights of every Linear and Conv layer perturbed element-wise by at most eps (absolute); "
             "biases and BatchNorm parameters exact. Certified: correctly classified and the margin lower bound "
             "is > 0 against every other class (hwfault.certify, float64). Per-input attack: each input gets its "
             "own perturbation (sign-gradient descent on its margin, 2 starts x 20 steps), the ceiling of any "
             "sound certificate; universal attack: one perturbation for the whole set (hwfault.multistep, 10 steps)."]
    for r in results:
        sub = f" (first {r['n']} of {r['n_test']} test inputs)" if r["n"] < r["n_test"] else ""
        parts.append(f"## {r['model']} on {r['data']}{sub}: clean {100 * r['clean_accuracy']:.1f}%, "
                     f"{r['k']:,} perturbed weights\n\n" + table(r))
    if peer is not None:
        parts.append(f"## The peer on the same model: auto_LiRPA {peer['peer_version'] or ''} vs hwfault, digits-mlp, "
                     f"{peer['n']} inputs, L-inf on all Linear weights\n\n" + peer_table(peer) +
                     "\n\nauto_LiRPA's IBP concretises the last layer on its own; hwfault merges it with the margin "
                     "specification, hence its tighter IBP. Both CROWNs give the same bound: the same relaxation.\n\n"
                     + "\n".join(f"- auto_LiRPA on {k} (Linear and Conv weights perturbed): {v}"
                                  for k, v in peer["other_models"].items()))
    parts.append(f"Anchor: {ANCHOR}")
    parts.append(f"Total time {seconds:.0f} s; {mach['platform']}, torch {mach['torch']}, {args.threads} thread(s); "
                 "times are per eps for the whole evaluation set.")
    md = "\n\n".join(parts)
    write_json({"machine": mach, "seconds": round(seconds, 1), "anchor": ANCHOR, "results": results, "peer": peer},
               args.out)
    write_md(args.out.with_suffix(".md"), md)
    print(md)
    log(f"[certify] wrote {args.out} and {args.out.with_suffix('.md')} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
