"""The table and figure of ``hwfault protect``: each protection's accuracy, SDC and DUE beside its cost."""

from __future__ import annotations

from pathlib import Path

from .labels import _pct

__all__ = ["protect_table", "plot_protect", "budget_text"]

STRATEGY_COLORS = {"ranked": "tab:red", "random": "tab:blue", "magnitude": "tab:green", "spec": "tab:purple"}


def budget_text(r: dict) -> str:
    if r["strategy"] == "none":
        return "-"
    share = r.get("budget_share")
    return f"{100 * share:.2g}%" if share else "-"


def _rate(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def protect_table(d: dict):
    """A rich Table of a :class:`~hwfault.analyses.protect.ProtectResult` dict."""
    from rich.table import Table

    c = d["chip"]
    metric = (d.get("task") or {}).get("metric", "accuracy")
    t = Table(title=f"{d['model']} on {d['data']}, chip {c['name']} ({c['format']}, {d['stored_weight_bits']:,} stored "
                    f"weight bits): stored {_pct(d['stored']['accuracy'])}%, {d['trials']} Monte-Carlo chips, "
                    f"the same for every row")
    cols = ["protection", "budget", "bits", "cost bits", "MC mean %", "MC min %", "worst case %", "SDC %", "DUE %"]
    if metric != "accuracy":
        cols.insert(4, f"MC {metric}")
    det = any("detection_rate" in r for r in d["results"])
    if det:
        cols += ["detected %", "false pos. %"]
    for col in cols:
        t.add_column(col, justify="left" if col == "protection" else "right")
    for r in d["results"]:
        name = r["strategy"] if r["strategy"] in ("none", "spec") else f"{r['protection']} {r['strategy']}"
        if r["strategy"] == "spec":
            name = "spec: " + ", ".join(r["protection"])
        wc = r.get("worst_case_accuracy")
        cells = [name, budget_text(r), f"{r['budget_bits']:,}" if r["budget_bits"] else "-", f"{r['cost_bits']:,}", _pct(r["accuracy_mean"]), _pct(r["accuracy_min"]),
                 "-" if wc is None else _pct(wc), _rate(r["sdc_rate"]), _rate(r["due_rate"])]
        if metric != "accuracy":
            v = r.get(f"{metric}_mean")
            cells.insert(4, "-" if v is None else f"{v:.4g}")
        if det:
            cells += [_rate(r.get("detection_rate")), _rate(r.get("false_positive_rate"))]
        t.add_row(*cells)
    half = " and, for half the budget, at the unprotected chip's worst-case point" if d.get("ranked_worst_point") else ""
    t.caption = (f"ranked: the worst-case ranking (|gradient x bit damage| at the stored weights{half}, gradients "
                 f"on {d['ranked_on']}); SDC and DUE per {d['units'][:-1]} (SDC among those the fault-free chip "
                 f"gets right)" + (f"; ECC/TMR do not act on this chip's {', '.join(d['not_protected'])} faults"
                                   if d.get("not_protected") else ""))
    return t


def plot_protect(d: dict, path: str | Path) -> None:
    """Accuracy vs protection budget, one curve per strategy: the Monte-Carlo mean (left) and the
    worst case (right), the unprotected chip as a gray line."""
    from .figures import _mpl, _save_fig

    plt = _mpl()
    rows = d["results"]
    none = next((r for r in rows if r["strategy"] == "none"), None)
    strategies = [s for s in dict.fromkeys(r["strategy"] for r in rows) if s not in ("none", "spec")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    shares = sorted({r["budget_share"] for r in rows if r["strategy"] in strategies})
    for ax, key, title in ((axes[0], "accuracy_mean", "Monte-Carlo mean"), (axes[1], "worst_case_accuracy", "worst case")):
        for s in strategies:
            pts = [(100 * r["budget_share"], 100 * r[key]) for r in sorted(rows, key=lambda r: r["budget_share"])
                   if r["strategy"] == s and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=STRATEGY_COLORS.get(s), label=s)
        if none is not None and none.get(key) is not None:
            ax.axhline(100 * none[key], color="gray", lw=1, ls="--", label="unprotected")
        if len(shares) > 1:
            ax.set_xscale("log")
        ax.set_xticks([100 * x for x in shares], [f"{100 * x:.2g}%" for x in shares])
        ax.minorticks_off()
        ax.set(xlabel="protected share of the stored weight bits", ylabel="accuracy (%)", title=title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{d['model']} on chip {d['chip']['name']}: {d.get('scheme', '')} on a budget of bits "
                 f"({d['trials']} chips)", fontsize=11)
    _save_fig(fig, path)
