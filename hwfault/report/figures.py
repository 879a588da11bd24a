"""Figures (matplotlib, Agg): sweeps, probes, chip estimates, campaigns, hardening, certification.

Every figure is written atomically to a path (its format from the suffix) or into a binary buffer
(PNG, for the HTML report). Labels come from :mod:`.labels`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..files import FIGURE_SUFFIXES, atomic_write, check_output
from . import labels as L
from .labels import REPORT_KEYS

DPI = 130


def _save_fig(fig, path) -> None:
    """Save a figure atomically to a path (its format from the suffix) or into a binary buffer (PNG)."""
    import matplotlib.pyplot as plt

    try:
        if hasattr(path, "write"):  # an in-memory buffer (the HTML report embeds its figure)
            fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
            return
        path = Path(path)
        check_output(path, what="figure", suffixes=FIGURE_SUFFIXES)
        ext = path.suffix.lstrip(".").lower()
        fmt = {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext or "png")
        atomic_write(path, lambda t: fig.savefig(t, format=fmt, dpi=DPI, bbox_inches="tight"), what="figure")
    finally:
        plt.close(fig)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"random": "tab:blue", "gradient": "tab:red", "multistep": "tab:purple"}


def plot_sweep(result, path: str | Path) -> None:
    """Accuracy vs eps (log x) per method, with the random min-max band; loss change vs eps (log-log)."""
    plt = _mpl()
    d = result.to_dict()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for res in result.results:
        xs = [p.eps for p in res.points]
        ys = [100 * p.accuracy for p in res.points]
        ax.plot(xs, ys, "o-", color=COLORS.get(res.method), label=res.method)
        if res.method == "random":
            ax.fill_between(xs, [100 * p.extra["accuracy_min"] for p in res.points],
                            [100 * p.extra["accuracy_max"] for p in res.points],
                            color=COLORS["random"], alpha=0.15, label="random min-max")
        pos = [(p.eps, p.loss_change) for p in res.points if math.isfinite(p.loss_change) and p.loss_change > 0]
        if pos:
            bx.plot(*zip(*pos), "o-", color=COLORS.get(res.method), label=res.method)
    ax.axhline(100 * d["clean"]["accuracy"], color="gray", ls="--", lw=1, label="clean")
    ax.set(xscale="log", xlabel=f"eps (L{d['norm']} norm of the corruption)", ylabel="accuracy (%)",
           ylim=(0, 100), title=f"{d['model']} on {d['data']}, n = {d['n']}")
    bx.set(xscale="log", yscale="log", xlabel="eps", ylabel="loss change", title="loss change (log-log)")
    for a in (ax, bx):
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    _save_fig(fig, path)


def plot_probe(result, path: str | Path) -> None:
    """Heatmap of accuracy under corruption: groups (rows) x eps (columns); warmer = more damage."""
    plt = _mpl()
    import numpy as np

    d = result.to_dict()
    groups, epsilons = result.groups, result.epsilons
    acc = np.full((len(groups), len(epsilons)), np.nan)
    for r in d["groups"]:
        acc[groups.index(r["group"]), epsilons.index(r["eps"])] = 100 * r["accuracy"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(epsilons), 0.9 + 0.42 * len(groups)))
    im = ax.imshow(acc, cmap="RdYlBu", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(epsilons)), [f"{e:g}" for e in epsilons])
    ax.set_yticks(range(len(groups)), groups)
    for i in range(len(groups)):
        for j in range(len(epsilons)):
            if np.isfinite(acc[i, j]):
                ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set(xlabel="eps", title=f"{d['model']}: accuracy (%) under gradient corruption per {d['by']}\n"
                               f"L{d['norm']}, n = {d['n']}, clean {100 * d['clean']['accuracy']:.1f}%")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    _save_fig(fig, path)


# ----------------------------------------------------------------------------- chip estimates

#: one look per quantity, the same in both panels of the estimate figure:
#: (color, line style, marker, marker size, filled)
STYLE = {"clean": ("dimgray", "--", "v", 6, True), "mc_mean": ("tab:blue", "-", "o", 6, True),
         "one_step": ("tab:red", "--", "s", 9, False), "multi_step": ("tab:purple", "-", "^", 6, True),
         "bit_search": ("black", ":", "D", 5, True), "certified": ("tab:green", "-.", "*", 9, True)}


def _marks(d: dict) -> list[tuple[str, str, float]]:
    """(style key, label, accuracy) of the vertical marks of the histogram, from clean down."""
    out = [("clean", "clean", d["clean"]["accuracy"]), ("mc_mean", "Monte-Carlo mean", d["random"]["accuracy_mean"])]
    w = d["worst_case"]
    out += [(k, "worst case: " + L.worst_case(k, short=True), w[k]["accuracy"])
            for k in ("one_step", "multi_step", "bit_search") if k in w and "skipped" not in w]
    if d.get("certified", {}).get("accuracy") is not None:
        out.append(("certified", "certified floor", d["certified"]["accuracy"]))
    return out


def _legend_below(ax, ncol: int = 3) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=ncol, fontsize=8, frameon=False,
              handlelength=2.6, columnspacing=1.4)


def _draw_histogram(ax, d: dict) -> None:
    """The Monte-Carlo chips as a histogram, the bracket as vertical marks; the legend below the axes."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    accs = [100 * a for a in d["random"]["accuracies"]]
    counts, _, _ = ax.hist(accs, bins=np.arange(0, 101, 1.0), color="#9cc3e6", edgecolor="tab:blue", lw=0.6,
                           zorder=2, label=f"simulated chips ({d['random']['trials']})")
    lo, hi = min(accs), max(accs)
    if hi - lo < 8:  # a narrow cluster is a thin bar on a 0-100% axis: say where the chips are
        ax.annotate(f"{len(accs)} chips: {lo:.1f}-{hi:.1f}%" if hi > lo else f"{len(accs)} chips: {lo:.1f}%",
                    xy=((lo + hi) / 2, float(max(counts))), xytext=(-8 if hi > 50 else 8, 0),
                    textcoords="offset points", ha="right" if hi > 50 else "left", va="center", fontsize=8,
                    color="tab:blue", zorder=21)
    marks = _marks(d)
    stack = []
    for i, (key, name, acc) in enumerate(marks):
        color, ls, marker, ms, filled = STYLE[key]
        x = 100 * acc
        ax.axvline(x, color=color, ls=ls, lw=1.6, zorder=3 + i)
        # a marker in the free band at the top for each mark, stacked downwards where marks lie
        # close together, so that marks at the same accuracy all show
        level = sum(1 for a in stack if abs(a - x) < 3)
        stack.append(x)
        if marker:
            ax.plot([x], [0.95 - 0.07 * level], marker=marker, ms=ms * 0.9, color=color, ls="none",
                    transform=ax.get_xaxis_transform(), markerfacecolor=color if filled else "white",
                    markeredgewidth=1.3, zorder=20)
        ax.plot([], [], color=color, ls=ls, lw=1.6, marker=marker, ms=ms * 0.8, markeredgewidth=1.2,
                markerfacecolor=color if filled else "white", label=f"{name}: {100 * acc:.1f}%")
    top = max(1.0, float(max(counts)))
    ax.set_ylim(0, top / 0.66)  # the top third stays free for the markers
    ax.set(xlabel="accuracy on the test data (%)", ylabel="simulated chips", xlim=(-2.5, 102.5))
    ax.set_title(f"{d['model']} on {d['chip']['name']}: {d['random']['trials']} simulated chips against the bracket",
                 fontsize=11)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.25, axis="y")
    _legend_below(ax, ncol=3)


def _draw_severity(ax, d: dict) -> None:
    """Accuracy against the severity factor: Monte-Carlo mean and both worst cases, each visible."""
    sev = d["severity"]
    xs = sev["factors"]
    series = [("mc_mean", "Monte-Carlo mean", sev["random_mean"], 4)]
    if None not in sev["one_step"]:
        # the one-step worst case: large open squares under the multi-step triangles, so that
        # coinciding points (often both at chance or at 0%) show both series
        series += [("one_step", "worst case: one step", sev["one_step"], 5)]
        if None not in sev["multi_step"]:  # (computed only with severity_steps > 0)
            series += [("multi_step", "worst case: multi-step", sev["multi_step"], 6)]
    for key, name, ys, z in series:
        color, ls, marker, ms, filled = STYLE[key]
        ax.plot(xs, [100 * v for v in ys], ls=ls, marker=marker, ms=ms, color=color, lw=1.6, zorder=z,
                markerfacecolor=color if filled else "white", markeredgewidth=1.4, label=name, clip_on=False)
    ax.axhline(100 * d["clean"]["accuracy"], color=STYLE["clean"][0], ls="--", lw=1, zorder=2,
               label=f"clean: {100 * d['clean']['accuracy']:.1f}%")
    if None not in sev["one_step"]:
        lows = [min(a, b if b is not None else a) for a, b in zip(sev["one_step"], sev["multi_step"])]
        ax.fill_between(xs, [100 * v for v in lows], [100 * v for v in sev["random_mean"]], color="tab:red",
                        alpha=0.07, lw=0, zorder=1, label="gap: typical chip to worst case")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"x{x:g}" for x in xs])
    ax.minorticks_off()
    ax.set(ylim=(-2, 102), ylabel="accuracy on the test data (%)",
           xlabel="fault severity (x1 = the chip as specified)")
    lines = L.nominals(d)
    ax.text(0.5, 1.015, "x1: " + "\n".join(lines), transform=ax.transAxes, ha="center", va="bottom",
            multialignment="center", fontsize=7.5, color="dimgray", linespacing=1.25)
    ax.set_title("accuracy as the faults get milder or worse", pad=10 + 11.5 * len(lines), fontsize=11)
    ax.grid(alpha=0.25, which="both")
    _legend_below(ax, ncol=2)


def estimate_figure(d: dict, which: str = "both"):
    """The estimate figure of an estimate dict: ``histogram``, ``severity`` or ``both`` side by side."""
    plt = _mpl()
    panels = {"histogram": [_draw_histogram], "severity": [_draw_severity] if d["severity"]["factors"] else [],
              "both": [_draw_histogram] + ([_draw_severity] if d["severity"]["factors"] else [])}[which]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    for ax, draw in zip(axes[0], panels):
        draw(ax, d)
    fig.subplots_adjust(wspace=0.28)
    return fig


def plot_estimate(result, path: str | Path) -> None:
    """Monte-Carlo accuracy histogram with the worst-case marks, and accuracy vs severity."""
    _save_fig(estimate_figure(result.to_dict(), "both"), path)


# ----------------------------------------------------------------------------- campaigns


def plot_layers(d: dict, path: str | Path) -> None:
    """Per-layer vulnerability heatmap: SDC, critical SDC and DUE rates and the accuracy drop per stratum."""
    plt = _mpl()
    import numpy as np

    names = list(d["strata"])
    cols = ["sdc_rate", "critical_sdc_rate", "due_rate"]
    m = np.array([[d["strata"][n][c] or 0.0 for c in cols] +
                  [max(0.0, (d.get("golden_accuracy") or 0) - (d["strata"][n]["accuracy_mean"] or 0))] for n in names])
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * len(names)))
    im = ax.imshow(100 * m, cmap="Reds", vmin=0, vmax=max(1e-9, 100 * m.max()), aspect="auto")
    ax.set_xticks(range(4), ["SDC", "critical SDC", "DUE", "accuracy drop"])
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(4):
            ax.text(j, i, f"{100 * m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"{(d.get('campaign') or {}).get('model')}: per-layer vulnerability (% of trials / points)")
    fig.colorbar(im, ax=ax, label="%")
    _save_fig(fig, path)


# ----------------------------------------------------------------------------- hardening and certification


def plot_hardening(d: dict, path: str | Path) -> None:
    """Grouped bars: base vs hardened for each figure of the bracket, plus both Monte-Carlo histograms."""
    plt = _mpl()
    s = d["summary"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    xs = range(len(REPORT_KEYS))
    for i, (key, color) in enumerate((("base", "tab:gray"), ("hardened", "tab:green"))):
        vals = [100 * s[key][k] for k, _ in REPORT_KEYS]
        bars = ax.bar([x + (i - 0.5) * 0.38 for x in xs], vals, 0.38, color=color, label=d[key]["model"])
        for r, v in zip(bars, vals):
            ax.text(r.get_x() + r.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(list(xs), [lab.replace("worst case: ", "worst\n").replace("Monte-Carlo ", "MC\n")
                             for _, lab in REPORT_KEYS], fontsize=8)
    ax.set(ylabel="accuracy (%)", ylim=(0, 108), title=f"on chip {d['base']['chip']['name']}")
    ax.legend(fontsize=8, loc="lower left")
    for key, color in (("base", "tab:gray"), ("hardened", "tab:green")):
        bx.hist([100 * a for a in d[key]["random"]["accuracies"]], bins=[i * 1.0 for i in range(101)], color=color,
                alpha=0.7, label=f"{d[key]['model']}: mean {100 * s[key]['mc_mean']:.1f}%")
    bx.set(xlabel="accuracy (%)", ylabel="chips", xlim=(0, 100), title="Monte-Carlo chips")
    bx.legend(fontsize=8, loc="upper left")
    _save_fig(fig, path)


def plot_certify(d: dict, path: str | Path) -> None:
    """Certified accuracy (the guaranteed floor) against eps, with the clean accuracy."""
    plt = _mpl()
    pts = [p for p in d["points"] if p.get("eps") is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if pts:
        xs = [p["eps"] for p in pts]
        ax.plot(xs, [100 * p["certified_accuracy"] for p in pts], "o-", color="tab:green",
                label=f"certified ({pts[0]['method']})")
        up = [(p["eps"], 100 * p["attack_upper_accuracy"]) for p in pts if p.get("attack_upper_accuracy") is not None]
        if up:
            ax.plot(*zip(*up), "v--", color="tab:red", label="attack upper bound")
            both = [(p["eps"], 100 * p["certified_accuracy"], 100 * p["attack_upper_accuracy"]) for p in pts
                    if p.get("attack_upper_accuracy") is not None]
            ex, lo, hi = zip(*both)
            ax.fill_between(ex, lo, hi, color="tab:orange", alpha=0.2, label="robust accuracy lies here")
        ax.axhline(100 * pts[0]["clean_accuracy"], color="gray", ls="--", lw=1, label="clean")
        ax.set_xscale("log")
    for p in d["points"]:
        if p.get("eps") is None:
            ax.axhline(100 * p["certified_accuracy"], color="tab:green", ls=":", label=f"{p.get('label', 'set')}")
    rel = f", relative to {d['relative']}" if d.get("relative") else ""
    ax.set(xlabel=f"eps (L{d.get('norm', '')}{rel})", ylabel="accuracy (%)", ylim=(0, 100),
           title=f"{d.get('model', '')}: certified accuracy under weight perturbation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_fig(fig, path)
