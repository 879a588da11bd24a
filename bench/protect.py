"""Protections on the zoo CNN, the residual net and the LM: Ranger against fp32 activation flips, and
TMR on a budget of weight bits chosen by hwfault against random and magnitude choice.

    .venv/bin/python bench/protect.py [--models digits-cnn,mnist1d-resnet,pycode-charlm] [--quick]

Part A (Ranger, Chen et al. DSN 2021; PyTorchALFI reports 3x-50x fewer SDCs): a fp32 chip whose
datapath takes one transient bit flip per inference, uniform over the bits of every conv and linear
output (``activation-bitflip``, ``count = 1``), with and without Ranger (bounds profiled on the
training split, ``clip`` and ``zero``). SDC rate: the share of (chip, unit) pairs, among the units the
fault-free chip gets right, whose top-1 changed (units: inputs; LM: tokens). Beside it the worst case
of that one flip (each input's one-step worst point in the activation covering set, ranked and
applied as Ranger leaves it), with the flips over every layer and over the hidden layers only.

Part B (selective TMR): on ``int8-sram-0.5v`` (1.56% persistent bit errors: Monte-Carlo loses
accuracy), an int8 chip at a stated stress level of 1e-5 (``int8-sram-1e-5``, built here: about 9
flips in the covering set) and ``int8-sram-nominal`` (1e-7: the 0.999 covering set holds one flip,
so the worst case discriminates), TMR on 0.5% and 2% of the stored weight bits, chosen ``ranked`` (|gradient x bit
damage| on the training split), ``random`` and ``magnitude``; Monte-Carlo accuracy on the same chips
for every row, and the worst case (one step, multi-step, bit search) inside each protected chip's
covering set, pooled across the rows of a chip (a point found for one row, with the flips of another
row's protected bits taken out, counts for that row where it lies in its set:
:mod:`hwfault.analyses.protect`). On the LM, part A again with the flips confined to its output head and to its blocks.
On the CNN, SECDED ECC at the same budgets on ``int8-sram-0.55v`` (0.23%), to show what
detected double errors (a 72-bit word with two flips reads NaN) do to persistent faults; at 1.56%
nearly a third of the words hold two or more flips and every chip is a DUE.

The numbers of chips and inputs are in the JSON (``settings``) and the Markdown. Writes
bench/results/protect.json, protect.md and protect.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, log, machine, md_table, names, write_md  # noqa: E402

import hwfault as hw  # noqa: E402
from hwfault.analyses.protect import protect  # noqa: E402
from hwfault.evaluation import as_tensors  # noqa: E402
from hwfault.report import write_json  # noqa: E402
from hwfault.spec import ChipSpec  # noqa: E402

# (chips in part A, chips and MC inputs in part B): small enough for ~10 minutes on 2 shared cores
PLAN = {"digits-cnn": {"ranger_chips": 40, "tmr_chips": 40, "inputs": None},
        "mnist1d-resnet": {"ranger_chips": 20, "tmr_chips": 30, "inputs": None},
        "pycode-charlm": {"ranger_chips": 40, "tmr_chips": 10, "inputs": 100}}
BUDGETS = (0.005, 0.02)


def _data(model: str, n: int | None):
    task = hw.zoo.model_task(model)
    name = hw.zoo.model_data(model)
    x, y = as_tensors(hw.load_data(name, task=task))
    tx, ty = as_tensors(hw.load_data(name, "train", task=task))
    if n is not None:  # evenly spaced held-out windows, and as many training windows to rank and profile on
        idx = torch.linspace(0, len(x) - 1, n).round().long()
        x, y = x[idx], y[idx]
        tidx = torch.linspace(0, len(tx) - 1, 4 * n).round().long()
        tx, ty = tx[tidx], ty[tidx]
    return (x, y), (tx, ty), task


def _act_chip(protection: list, params: list | None = None) -> ChipSpec:
    return ChipSpec.model_validate({
        "schema_version": 1, "name": "fp32-activation-flip", "format": {"kind": "fp32"},
        "description": "fp32 datapath: one transient bit flip per inference in the outputs of conv and linear layers",
        "faults": [{"kind": "activation-bitflip", "count": 1, "mode": "transient", "params": params or []}],
        "protection": protection})


def lm_layers_part(model: str, plan: dict, seed: int) -> dict:
    """The LM's flips confined to its output head, and to the blocks: where Ranger helps."""
    data, train, _ = _data(model, plan["inputs"])
    m = hw.load_model(model)
    linear = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
    out = {"model": model, "chips": plan["ranger_chips"], "inputs": len(data[0])}
    for where, params in (("head", linear[-1:]), ("blocks", linear[:-1])):
        r = protect(model, data, _act_chip([{"kind": "ranger"}], params), budgets=[], trials=plan["ranger_chips"],
                    seed=seed, worst_case=False, rank_data=train).to_dict()
        none, rg = r["results"]
        out[where] = {"layers": params, "sdc_none": none["sdc_rate"], "sdc_ranger": rg["sdc_rate"]}
    return out


def ranger_worst_part(model: str, plan: dict, seed: int) -> dict:
    """The worst case of one fp32 flip per inference (a per-input adversary inside the activation
    covering set), with and without Ranger: the flips over every conv and linear output, and over
    all but the output layer (the hidden layers)."""
    data, train, _ = _data(model, plan["inputs"])
    m = hw.load_model(model)
    layers = [n for n, mod in m.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
    out = {"model": model, "inputs": len(data[0]), "hidden_layers": layers[:-1]}
    for where, params in (("all", []), ("hidden", layers[:-1])):
        for mode in ("clip", "zero"):
            r = protect(model, data, _act_chip([{"kind": "ranger", "mode": mode}], params), budgets=[], trials=2,
                        seed=seed, rank_data=train).to_dict()
            none, rg = r["results"]
            out.setdefault(where, {})["none"] = none["worst_case_accuracy"]
            out[where][f"ranger_{mode}"] = rg["worst_case_accuracy"]
            out[where][f"ranger_{mode}_mc_min"] = rg["accuracy_min"]
    return out


def ranger_part(model: str, plan: dict, seed: int) -> dict:
    data, train, task = _data(model, plan["inputs"])
    out = {"model": model, "chips": plan["ranger_chips"], "inputs": len(data[0]), "task": task or "classification"}
    for mode in ("clip", "zero"):
        r = protect(model, data, _act_chip([{"kind": "ranger", "mode": mode}]), budgets=[], trials=plan["ranger_chips"],
                    seed=seed, worst_case=False, rank_data=train).to_dict()
        none, rg = r["results"]
        out.setdefault("none", {k: none[k] for k in ("accuracy_mean", "sdc_rate", "due_rate")})
        out[f"ranger_{mode}"] = {k: rg[k] for k in ("accuracy_mean", "sdc_rate", "due_rate", "cost_bits")}
        out[f"ranger_{mode}"]["extra_ops"] = rg["cost"][0]["extra_ops"]
        out[f"ranger_{mode}"]["sdc_reduction"] = none["sdc_rate"] / rg["sdc_rate"] if rg["sdc_rate"] else None
        if task == "lm":
            out["none"]["perplexity_mean"] = none.get("perplexity_mean")
            out[f"ranger_{mode}"]["perplexity_mean"] = rg.get("perplexity_mean")
        out["stored"] = r["stored"]
    return out


def tmr_part(model: str, chip, plan: dict, seed: int, scheme: str = "tmr", trials: int | None = None) -> dict:
    data, train, task = _data(model, plan["inputs"])
    r = protect(model, data, chip, budgets=list(BUDGETS), scheme=scheme, trials=trials or plan["tmr_chips"],
                seed=seed, rank_data=train, search_inputs=64 if plan["inputs"] is None else 32).to_dict()
    return {"model": model, "chip": chip if isinstance(chip, str) else chip.name, "scheme": scheme,
            "inputs": len(data[0]), "result": r}


#: between the nominal and the low-voltage presets: int8 SRAM at a stated stress level of 1e-5 per bit
#: (about 3 flips per digits-cnn chip; the 0.999 covering set holds about 9), where the worst case is
#: neither one flip nor at chance whatever is protected
MID = ChipSpec.model_validate({
    "schema_version": 1, "name": "int8-sram-1e-5", "format": {"kind": "int8"},
    "description": "int8 weights in SRAM with persistent bit errors at a stated stress level of 1e-5 per bit",
    "faults": [{"kind": "bitflip", "ber": 1e-5, "mode": "persistent"}]})


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _rate(v) -> str:
    return "-" if v is None else f"{100 * v:.3g}" if 0 < v < 1e-3 else f"{100 * v:.2f}"


def markdown(d: dict) -> str:
    lines = ["# Protections", "", f"{d['seconds']:.0f} s on {d['machine']['cpu_count']} cores "
             f"({d['machine']['torch_threads']} torch thread).", "",
             "## Ranger against fp32 activation flips (one flip per inference)", "",
             "SDC: share of the units the fault-free chip gets right whose top-1 changed (inputs; LM: tokens), "
             "over all chips.", ""]
    rows = []
    for a in d["ranger"]:
        n, c, z = a["none"], a["ranger_clip"], a["ranger_zero"]
        red = lambda r: "-" if r["sdc_reduction"] is None else f"{r['sdc_reduction']:.0f}x"  # noqa: E731
        rows.append([a["model"], f"{a['chips']} x {a['inputs']}", _rate(n["sdc_rate"]), _rate(c["sdc_rate"]), red(c),
                     _rate(z["sdc_rate"]), red(z), _pct(n["accuracy_mean"]), _pct(c["accuracy_mean"]),
                     f"{c['extra_ops']:,}"])
    lines.append(md_table(["model", "chips x inputs", "SDC % none", "SDC % Ranger (clip)", "fewer SDCs",
                           "SDC % Ranger (zero)", "fewer SDCs", "acc % none", "acc % Ranger", "compares/inference"],
                          rows))
    lines += ["", "A zero SDC rate has no finite ratio (`-`: none of the chips' flips changed a top-1 with Ranger)."]
    if d.get("lm_layers"):
        q = d["lm_layers"]
        lines += ["", f"{q['model']}, flips confined to some layers ({q['chips']} chips x {q['inputs']} windows): "
                  f"the output head ({', '.join(q['head']['layers'])}) SDC {_rate(q['head']['sdc_none'])}% -> "
                  f"{_rate(q['head']['sdc_ranger'])}% with Ranger; the blocks ({len(q['blocks']['layers'])} layers) "
                  f"{_rate(q['blocks']['sdc_none'])}% -> {_rate(q['blocks']['sdc_ranger'])}%."]
    if d.get("ranger_worst"):
        lines += ["", "Worst case of one fp32 flip per inference (the one-step worst point of each input inside the "
                  "activation covering set; with Ranger the flips are ranked and applied as Ranger leaves them), "
                  "accuracy %:", ""]
        rows = []
        for w in d["ranger_worst"]:
            for where in ("all", "hidden"):
                q = w[where]
                rows.append([w["model"], "every conv/linear output" if where == "all" else
                             f"hidden layers ({len(w['hidden_layers'])}, not the output layer)", _pct(q["none"]),
                             _pct(q["ranger_clip"]), _pct(q["ranger_zero"])])
        lines.append(md_table(["model", "flips in", "worst none", "worst Ranger (clip)", "worst Ranger (zero)"], rows))
    lines += ["",
              "## TMR on a budget of weight bits: hwfault's ranked choice vs random and magnitude", "",
              "Monte-Carlo mean (min) accuracy on the same chips for every row; worst case: the lowest of one step, "
              "multi-step and bit search inside the protected chip's 0.999 covering set, pooled across the rows of "
              "a chip: a point any row's searches found, with the flips of this row's protected bits taken out, "
              "counts where it lies in this row's set (`*`: the value is such a point). LM: token accuracy "
              "(perplexity beside it). Cost: redundancy + index bits.", ""]
    rows = []
    for t in d["tmr"]:
        r = t["result"]
        ppl = r["task"]["metric"] == "perplexity"
        for row in r["results"]:
            name = "none" if row["strategy"] == "none" else f"{t['scheme']} {row['strategy']}"
            budget = "-" if row["strategy"] == "none" else f"{100 * row['budget_share']:.2g}%"
            mc = f"{_pct(row['accuracy_mean'])} ({_pct(row['accuracy_min'])})"
            if ppl:
                mc += f"; ppl {row['perplexity_mean']:.3g}"
            wc = _pct(row["worst_case_accuracy"]) + ("*" if "pooled" in (row.get("worst_case") or {}) else "")
            rows.append([t["model"], t["chip"], name, budget, f"{row['cost_bits']:,}", mc,
                         wc, _rate(row["sdc_rate"]), _rate(row["due_rate"])])
    lines.append(md_table(["model", "chip", "protection", "budget", "cost bits", "MC mean (min) %", "worst case %",
                           "SDC %", "DUE %"], rows))
    lines += ["", "Chips per row: " + "; ".join(f"{t['model']} on {t['chip']} ({t['scheme']}): "
                                                 f"{t['result']['trials']} chips x {t['inputs']} inputs"
                                                 for t in d["tmr"]) + ".", ""]
    lines += ["## Checks", ""] + [f"- {c}" for c in d["checks"]]
    return "\n".join(lines)


def checks(d: dict) -> list[str]:
    out = []
    for a in d["ranger"]:
        red = a["ranger_clip"]["sdc_reduction"]
        ok = red is None and a["none"]["sdc_rate"] > 0 or (red is not None and red >= 3)
        out.append(f"{a['model']}: Ranger (clip) lowers the fp32 activation-flip SDC rate "
                   f"{_rate(a['none']['sdc_rate'])}% -> {_rate(a['ranger_clip']['sdc_rate'])}%"
                   f" ({'>= 3x' if ok else '< 3x'}): {'PASS' if ok else 'FAIL'}")
    for w in d.get("ranger_worst", []):
        q = w["hidden"]
        ok = q["ranger_clip"] > q["none"] and q["ranger_zero"] > q["none"]
        out.append(f"{w['model']}: Ranger raises the worst case of one fp32 flip per inference in the hidden layers "
                   f"{_pct(q['none'])}% -> {_pct(q['ranger_clip'])}% (clip), {_pct(q['ranger_zero'])}% (zero): "
                   f"{'yes' if ok else 'no'}")
    for t in d["tmr"]:
        rows = t["result"]["results"]
        for b in BUDGETS:
            get = {r["strategy"]: r for r in rows if r["budget"] == b}
            if "ranked" not in get:
                continue
            mc = all(get["ranked"]["accuracy_mean"] > get[s]["accuracy_mean"] for s in ("random", "magnitude"))
            mc_tie = all(get["ranked"]["accuracy_mean"] == get[s]["accuracy_mean"] for s in ("random", "magnitude"))
            wc = all(get["ranked"]["worst_case_accuracy"] > get[s]["worst_case_accuracy"] for s in ("random", "magnitude"))
            tie = all(get["ranked"]["worst_case_accuracy"] == get[s]["worst_case_accuracy"] for s in ("random", "magnitude"))
            vals = lambda k: " vs ".join(_pct(get[s][k]) for s in ("ranked", "random", "magnitude"))  # noqa: E731
            out.append(f"{t['model']} on {t['chip']} ({t['scheme']}, {100 * b:.2g}%): ranked beats random and magnitude "
                       f"in Monte-Carlo mean: {'yes' if mc else 'tie' if mc_tie else 'no'} ({vals('accuracy_mean')}); "
                       f"in worst case: {'yes' if wc else 'tie' if tie else 'no'} ({vals('worst_case_accuracy')})")
    return out


def figure(d: dict, path: Path) -> None:
    from hwfault.report.figures import _mpl, _save_fig
    from hwfault.report.protect import STRATEGY_COLORS

    plt = _mpl()
    models = [a["model"] for a in d["ranger"]]
    panels = (("int8-sram-0.5v", "accuracy_mean"), (MID.name, "worst_case_accuracy"),
              ("int8-sram-nominal", "worst_case_accuracy"))
    fig, axes = plt.subplots(len(models), 1 + len(panels), figsize=(17, 3.3 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        a = next(x for x in d["ranger"] if x["model"] == model)
        ax = axes[i][0]
        vals = [100 * a["none"]["sdc_rate"], 100 * a["ranger_clip"]["sdc_rate"], 100 * a["ranger_zero"]["sdc_rate"]]
        ax.bar(["none", "Ranger\nclip", "Ranger\nzero"], vals, color=["tab:gray", "tab:red", "tab:orange"])
        for x, v in enumerate(vals):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set(ylabel="SDC (%)", title=f"{model}: fp32 activation flips")
        for j, (chip, key) in enumerate(panels):
            ax = axes[i][j + 1]
            t = next((x for x in d["tmr"] if x["model"] == model and x["chip"] == chip and x["scheme"] == "tmr"), None)
            if t is None:
                ax.axis("off")
                continue
            rows = t["result"]["results"]
            for s in ("ranked", "random", "magnitude"):
                pts = [(100 * r["budget_share"], 100 * r[key]) for r in rows if r["strategy"] == s and r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), "o-", color=STRATEGY_COLORS[s], label=s)
            none = rows[0][key]
            if none is not None:
                ax.axhline(100 * none, color="gray", ls="--", lw=1, label="unprotected")
            ax.set_xscale("log")
            ax.set_xticks([100 * b for b in BUDGETS], [f"{100 * b:.2g}%" for b in BUDGETS])
            ax.minorticks_off()
            ax.set(title=f"{chip}: {'Monte-Carlo mean' if key == 'accuracy_mean' else 'worst case'} (TMR)",
                   ylabel="token accuracy (%)" if t["result"]["task"]["metric"] == "perplexity" else "accuracy (%)")
            ax.legend(fontsize=7)
        for j in range(len(panels)):
            axes[-1][j + 1].set_xlabel("protected share of the stored weight bits")
    fig.tight_layout()
    _save_fig(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=names, default=list(PLAN))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a quarter of the chips (a smoke run)")
    p.add_argument("--out", type=Path, default=RESULTS / "protect.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    d = {"machine": machine(), "settings": {"plan": {m: PLAN[m] for m in args.models}, "budgets": list(BUDGETS),
                                            "seed": args.seed, "quick": args.quick}, "ranger": [], "ranger_worst": [], "tmr": []}
    for m in args.models:
        plan = dict(PLAN[m])
        if args.quick:
            plan = {k: (max(2, v // 4) if k.endswith("chips") else v) for k, v in plan.items()}
        tick = time.perf_counter()
        d["ranger"].append(ranger_part(m, plan, args.seed))
        d["ranger_worst"].append(ranger_worst_part(m, plan, args.seed))
        log(f"{m}: Ranger {time.perf_counter() - tick:.0f} s")
        for chip in ("int8-sram-0.5v", MID, "int8-sram-nominal"):
            tick = time.perf_counter()
            trials = None if chip == "int8-sram-0.5v" else 10 if chip is MID else 2
            d["tmr"].append(tmr_part(m, chip, plan, args.seed, trials=trials))
            log(f"{m}: TMR on {getattr(chip, 'name', chip)} {time.perf_counter() - tick:.0f} s")
        if hw.zoo.model_task(m) == "lm":
            tick = time.perf_counter()
            d["lm_layers"] = lm_layers_part(m, plan, args.seed)
            log(f"{m}: Ranger by layers {time.perf_counter() - tick:.0f} s")
        if m == "digits-cnn":
            tick = time.perf_counter()
            d["tmr"].append(tmr_part(m, "int8-sram-0.55v", plan, args.seed, scheme="ecc"))
            log(f"{m}: ECC on int8-sram-0.55v {time.perf_counter() - tick:.0f} s")
    d["seconds"] = time.perf_counter() - t0
    d["checks"] = checks(d)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(d, str(args.out))
    text = markdown(d)
    write_md(args.out.with_suffix(".md"), text)
    figure(d, args.out.with_suffix(".png"))
    print(text)
    log(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
