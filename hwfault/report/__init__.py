"""Output: JSON (written atomically), human tables (rich, on stderr), and matplotlib figures."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..errors import HwfaultError
from ..files import FIGURE_SUFFIXES, REPORT_SUFFIXES, atomic_write, check_output


def _clean(obj):
    """Replace non-finite floats by None so the JSON is strict (RFC 8259)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(obj: dict, path: str | Path) -> None:
    """Write strict JSON to ``path`` atomically (``-`` = stdout)."""
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    atomic_write(path, lambda t: t.write_text(text), what="--json")


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "inf" if v == math.inf else "nan"
    return f"{v:.3g}"


def sweep_table(result):
    """A rich Table of a :class:`~hwfault.sweep.SweepResult`."""
    from rich.table import Table

    d = result.to_dict()
    t = Table(title=f"{d['model']} on {d['data']}: L{d['norm']} corruption, n = {d['n']} of k = {d['k']:,} "
                    f"(clean {_pct(d['clean']['accuracy'])}%; gradient from {d['probe']})")
    for col in ("method", "eps", "accuracy %", "min-max %", "loss change", "first order"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in d["results"]:
        rng = (f"{_pct(r['accuracy_min'])}-{_pct(r['accuracy_max'])}" if "accuracy_min" in r else "")
        t.add_row(r["method"], f"{r['eps']:g}", _pct(r["accuracy"]), rng, _num(r["loss_change"]),
                  _num(r["first_order"]) if "first_order" in r else "")
    return t


def probe_table(result):
    from rich.table import Table

    d = result.to_dict()
    t = Table(title=f"{d['model']} on {d['data']}: gradient corruption per {d['by']}, L{d['norm']}, "
                    f"n = {d['n']} (clean {_pct(d['clean']['accuracy'])}%)")
    for col in (d["by"], "params", "eps", "accuracy %", "loss change"):
        t.add_column(col, justify="left" if col == d["by"] else "right")
    for r in d["groups"]:
        t.add_row(r["group"], f"{r['numel']:,}", f"{r['eps']:g}", _pct(r["accuracy"]), _num(r["loss_change"]))
    return t


def print_table(table) -> None:
    from rich.console import Console

    Console(stderr=True, width=max(100, Console(stderr=True).width)).print(table)


def _save_fig(fig, path) -> None:
    """Save a figure atomically to a path (its format from the suffix) or into a binary buffer (PNG)."""
    import matplotlib.pyplot as plt

    try:
        if hasattr(path, "write"):  # an in-memory buffer (the HTML report embeds its figure)
            fig.savefig(path, format="png", dpi=130, bbox_inches="tight")
            return
        path = Path(path)
        check_output(path, what="figure", suffixes=FIGURE_SUFFIXES)
        ext = path.suffix.lstrip(".").lower()
        fmt = {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext or "png")
        atomic_write(path, lambda t: fig.savefig(t, format=fmt, dpi=130, bbox_inches="tight"), what="figure")
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


def _bracket_rows(d: dict) -> list[tuple[str, float | None, str]]:
    r, w = d["random"], d["worst_case"]
    lo, hi = r["accuracy_ci95"]
    rows = [("clean (float32)", d["clean"]["accuracy"], ""),
            (f"stored as {d['chip']['format']}", d["quantized"]["accuracy"], "faults off"),
            ("Monte-Carlo mean", r["accuracy_mean"], f"95% CI {_pct(lo)}-{_pct(hi)}, {r['trials']} chips"),
            ("Monte-Carlo 1st percentile", r["accuracy_p01"], ""),
            ("Monte-Carlo min", r["accuracy_min"], "")]
    if "skipped" in w:
        rows.append(("worst case", None, w["skipped"]))
    else:
        rows += [("worst case: one step", w["one_step"]["accuracy"],
                  f"first-order loss change {_num(w['one_step']['first_order'])}"),
                 ("worst case: multi-step", w["multi_step"]["accuracy"], f"{w['multi_step']['steps']} steps")]
    if "bit_search" in w:
        rows.append(("worst case: bit search", w["bit_search"]["accuracy"],
                     f"{w['bit_search']['flips']} of {w['bit_search']['budget']} flips/cells"))
    if "certified" in d:
        c = d["certified"]
        rows.append(("certified floor", c.get("accuracy"),
                     c.get("method") or "" if c.get("accuracy") is not None else f"none: {c.get('reason', '')}"))
    return rows


def estimate_table(result):
    from rich.table import Table

    d = result.to_dict()
    t = Table(title=f"{d['model']} on {d['data']}, chip {d['chip']['name']} "
                    f"({d['chip']['format']}, {d['chip']['k']:,} weights on the device; coverage {d['chip']['coverage']})")
    t.add_column("")
    t.add_column("accuracy %", justify="right")
    t.add_column("note")
    for name, acc, note in _bracket_rows(d):
        t.add_row(name, _pct(acc), note)
    for f in d["faults"]:
        wc = f["worst_case"]
        worst = None if "skipped" in wc else min(v["accuracy"] for v in wc.values())
        t.add_row(f"  {f['fault']['kind']} alone", _pct(f["random"]["accuracy_mean"]),
                  "Monte-Carlo mean" + ("" if worst is None else f"; worst case {_pct(worst)}"))
    return t


def plot_estimate(result, path: str | Path) -> None:
    """Monte-Carlo accuracy histogram with the worst-case marks, and accuracy vs severity."""
    plt = _mpl()
    d = result.to_dict()
    sev = d["severity"]
    fig, axes = plt.subplots(1, 2 if sev["factors"] else 1, figsize=(12 if sev["factors"] else 6.5, 4.2))
    ax = axes[0] if sev["factors"] else axes
    accs = [100 * a for a in d["random"]["accuracies"]]
    ax.hist(accs, bins=[i * 0.5 for i in range(201)], color="tab:blue", alpha=0.8, label="Monte-Carlo chips")
    marks = [("clean", d["clean"]["accuracy"], "gray", "--")]
    if "skipped" not in d["worst_case"]:
        marks += [("one step", d["worst_case"]["one_step"]["accuracy"], "tab:red", "-"),
                  ("multi-step", d["worst_case"]["multi_step"]["accuracy"], "tab:purple", "-")]
    if "bit_search" in d["worst_case"]:
        marks.append(("bit search", d["worst_case"]["bit_search"]["accuracy"], "black", ":"))
    if d.get("certified", {}).get("accuracy") is not None:
        marks.append(("certified", d["certified"]["accuracy"], "tab:green", "-."))
    for name, acc, color, ls in marks:
        ax.axvline(100 * acc, color=color, ls=ls, lw=1.5, label=f"{name} {100 * acc:.1f}%")
    ax.set(xlabel="accuracy (%)", ylabel="chips", xlim=(0, 100),
           title=f"{d['model']} on {d['chip']['name']}: {d['random']['trials']} chips vs worst case")
    ax.legend(fontsize=8, loc="upper left")
    if sev["factors"]:
        bx = axes[1]
        xs = sev["factors"]
        bx.plot(xs, [100 * v for v in sev["random_mean"]], "o-", color="tab:blue", label="Monte-Carlo mean")
        if None not in sev["one_step"]:
            bx.plot(xs, [100 * v for v in sev["one_step"]], "o-", color="tab:red", label="worst case, one step")
            bx.plot(xs, [100 * v for v in sev["multi_step"]], "o-", color="tab:purple", label="worst case, multi-step")
        bx.axhline(100 * d["clean"]["accuracy"], color="gray", ls="--", lw=1, label="clean")
        nominal = ", ".join(f"{k} {sev['severity_name'][k]} {v:g}" for k, v in sev["nominal"].items())
        bx.set(xscale="log", xlabel=f"severity (x nominal: {nominal})", ylabel="accuracy (%)", ylim=(0, 100),
               title="accuracy vs fault severity")
        bx.set_xticks(xs, [f"x{x:g}" for x in xs])
        bx.minorticks_off()
        bx.grid(alpha=0.3, which="both")
        bx.legend(fontsize=8)
    _save_fig(fig, path)


def write_report(result, path: str | Path) -> None:
    """An HTML (``.html``) or Markdown (``.md``, figure beside it) report of an estimate."""
    import base64
    import html
    import io

    path = Path(path)
    check_output(path, what="--report", suffixes=REPORT_SUFFIXES)
    d = result.to_dict()
    rows = _bracket_rows(d)
    fault_rows = [(f["fault"]["kind"], f["random"]["accuracy_mean"], f["random"]["accuracy_min"],
                   {k: v["accuracy"] for k, v in f["worst_case"].items() if k != "skipped"}) for f in d["faults"]]
    chip_lines = [f"format {d['chip']['format']}, {d['chip']['k']:,} weights on the device "
                  f"({', '.join(d['chip']['params'])}), coverage {d['chip']['coverage']}"]
    chip_lines += [", ".join(f"{k} {v}" for k, v in f.items()) for f in d["chip"]["faults"]]
    if path.suffix.lower() == ".md":
        fig = path.with_suffix(".png")
        plot_estimate(result, fig)
        md = [f"# {d['model']} on chip {d['chip']['name']}", "", *[f"- {c}" for c in chip_lines], "",
              "| | accuracy % | note |", "|---|---:|---|", *[f"| {n} | {_pct(a)} | {t} |" for n, a, t in rows], ""]
        if fault_rows:
            md += ["| fault alone | Monte-Carlo mean % | min % | worst case % |", "|---|---:|---:|---|",
                   *[f"| {k} | {_pct(m)} | {_pct(lo)} | " + ", ".join(f"{n} {_pct(v)}" for n, v in w.items()) + " |"
                     for k, m, lo, w in fault_rows], ""]
        md += [f"![bracket]({fig.name})", ""]
        atomic_write(path, lambda t: t.write_text("\n".join(md)), what="--report")
        return
    buf = io.BytesIO()
    plot_estimate(result, buf)
    img = base64.b64encode(buf.getvalue()).decode()
    e = html.escape
    trs = "".join(f"<tr><td>{e(n)}</td><td class=n>{_pct(a)}</td><td>{e(t)}</td></tr>" for n, a, t in rows)
    frs = "".join(f"<tr><td>{e(k)}</td><td class=n>{_pct(m)}</td><td class=n>{_pct(lo)}</td><td>"
                  + e(", ".join(f"{n} {_pct(v)}" for n, v in w.items())) + "</td></tr>" for k, m, lo, w in fault_rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hwfault: {e(d['model'])} on {e(d['chip']['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd}}
.n{{text-align:right}}table{{border-collapse:collapse;margin:1em 0}}</style></head><body>
<h1>{e(d['model'])} on chip <code>{e(d['chip']['name'])}</code></h1>
<ul>{''.join(f'<li>{e(c)}</li>' for c in chip_lines)}</ul>
<h2>The bracket</h2><table><tr><th></th><th>accuracy %</th><th>note</th></tr>{trs}</table>
{'<h2>Each fault alone</h2><table><tr><th>fault</th><th>Monte-Carlo mean %</th><th>min %</th><th>worst case %</th></tr>' + frs + '</table>' if frs else ''}
<img src="data:image/png;base64,{img}" style="max-width:100%">
<p>Data {e(d['data'])}; gradient from {e(d['probe'])}; seed {d['seed']}; {d['seconds']} s. Generated by hwfault.</p>
</body></html>"""
    atomic_write(path, lambda t: t.write_text(page), what="--report")


# ----------------------------------------------------------------------------- campaigns


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:,.3g} {unit}"
    return f"{seconds:.3g} s"


def plan_table(plan, estimate: dict | None = None, workers: int = 1):
    from rich.table import Table

    from ..validate import MAX_CAMPAIGN_TRIALS

    d = plan.to_dict()
    pop = "infinite (fault patterns)" if d["population"] is None else f"{d['population']:,} (sites x bits)"
    sizing = (f"margin {d['margin']} at {d['confidence']:.0%} confidence (Leveugle et al. 2009)"
              if d["margin"] is not None else "trials given")
    title = f"campaign plan: {d['planned_trials']:,} trials; {d['mode']}; population {pop}; {sizing}"
    if estimate is not None:
        title += (f"\nestimated time: {_duration(estimate['estimated_seconds'] / max(workers, 1))} "
                  f"({1000 * estimate['seconds_per_trial']:.3g} ms per trial, {estimate['measured_trials']} trials "
                  f"measured, {workers} worker{'s' if workers > 1 else ''})")
        if d["planned_trials"] > MAX_CAMPAIGN_TRIALS:
            title += f"\nbeyond the ceiling of {MAX_CAMPAIGN_TRIALS:,} trials: this plan would be refused"
    t = Table(title=title)
    for col in ("stratum", "weights", "population", "trials"):
        t.add_column(col, justify="left" if col == "stratum" else "right")
    for s in d["strata"]:
        t.add_row(s["name"], f"{s['sites']:,}", "inf" if s["population"] is None else f"{s['population']:,}",
                  f"{s['trials']:,}")
    return t


def campaign_table(d: dict):
    from rich.table import Table

    ident = d.get("campaign") or {}
    title = (f"{ident.get('model')} on {ident.get('data')}, chip {ident.get('chip', {}).get('name')}: "
             f"{d['overall']['trials']:,} trials, golden accuracy {_pct(d.get('golden_accuracy'))}%")
    if d.get("trials_per_second"):
        title += f", {d['trials_per_second']:.1f} trials/s"
    t = Table(title=title)
    for col in ("stratum", "trials", "accuracy % [95% CI]", "min %", "SDC % [95% CI]", "critical SDC %", "DUE %"):
        t.add_column(col, justify="left" if col == "stratum" else "right")

    def row(name, a):
        ci = a["accuracy_ci95"] or [None, None]
        sci = a["sdc_ci95"] or [None, None]
        t.add_row(name, f"{a['trials']:,}", f"{_pct(a['accuracy_mean'])} [{_pct(ci[0])}, {_pct(ci[1])}]",
                  _pct(a["accuracy_min"]), f"{_pct(a['sdc_rate'])} [{_pct(sci[0])}, {_pct(sci[1])}]",
                  _pct(a["critical_sdc_rate"]), _pct(a["due_rate"]))

    if len(d["strata"]) > 1:
        for name, a in d["strata"].items():
            row(name, a)
    row("all", d["overall"])
    return t


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


def write_csv(rows, path: str | Path) -> None:
    """Trial rows (any iterable of dicts, e.g. a journal cursor) as CSV, streamed to disk (``-`` = stdout)."""
    import csv

    def write(stream) -> None:
        w = None
        for r in rows:
            if w is None:
                w = csv.DictWriter(stream, fieldnames=list(r))
                w.writeheader()
            w.writerow(r)

    if str(path) == "-":
        write(sys.stdout)
        return

    def to_file(t: Path) -> None:
        with open(t, "w", newline="", encoding="utf-8") as f:
            write(f)

    atomic_write(path, to_file, what="--csv")


def write_parquet(rows, path: str | Path, batch: int = 65536) -> None:
    """Trial rows (any iterable of dicts) as Parquet, written in row groups of ``batch`` rows."""
    import itertools

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HwfaultError("--parquet needs the pyarrow package (pip install pyarrow)") from None

    def to_file(t: Path) -> None:
        it = iter(rows)
        writer = None
        try:
            while chunk := list(itertools.islice(it, batch)):
                table = pa.Table.from_pylist(chunk)
                if writer is None:
                    writer = pq.ParquetWriter(str(t), table.schema)
                writer.write_table(table.cast(writer.schema))
            if writer is None:
                pq.write_table(pa.table({}), str(t))
        finally:
            if writer is not None:
                writer.close()

    atomic_write(path, to_file, what="--parquet")


# ----------------------------------------------------------------------------- hardening


def hardening_table(d: dict):
    """Base vs hardened on the chip (the ``summary`` of :func:`hwfault.harden.hardening_report`)."""
    from rich.table import Table

    from ..analyses.harden import REPORT_KEYS

    s = d["summary"]
    b = d["base"]
    t = Table(title=f"{b['model']} -> {d['hardened']['model']} on chip {b['chip']['name']} "
                    f"({b['random']['trials']} Monte-Carlo chips, the same for both)")
    t.add_column("accuracy %")
    for col in ("base", "hardened", "change"):
        t.add_column(col, justify="right")
    for key, label in REPORT_KEYS:
        ch = s["change"][key]
        t.add_row(label, _pct(s["base"][key]), _pct(s["hardened"][key]), f"{100 * ch:+.1f}")
    return t


def plot_hardening(d: dict, path: str | Path) -> None:
    """Grouped bars: base vs hardened for each figure of the bracket, plus both Monte-Carlo histograms."""
    plt = _mpl()
    from ..analyses.harden import REPORT_KEYS

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


# ----------------------------------------------------------------------------- certification


def certify_table(d: dict, title: str):
    from rich.table import Table

    t = Table(title=title)
    upper = any(p.get("attack_upper_accuracy") is not None for p in d["points"])
    cols = ("set", "method", "certified acc %") + (("attack upper %",) if upper else ()) + (
        "certified stable %", "clean %", "mean margin bound", "s")
    for col in cols:
        t.add_column(col, justify="left" if col in ("set", "method") else "right")
    for p in d["points"]:
        up = (_pct(p.get("attack_upper_accuracy")) if p.get("attack_upper_accuracy") is not None else "",) \
            if upper else ()
        t.add_row(str(p.get("label") or f"eps={p['eps']:g}"), p["method"], _pct(p["certified_accuracy"]), *up,
                  _pct(p["certified_stable"]), _pct(p["clean_accuracy"]), _num(p["mean_margin_lower"]),
                  f"{p['seconds']:.1f}")
    if upper:
        t.caption = "attack upper: correct inputs no attack broke; the robust accuracy lies between it and certified"
    return t


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
