"""Output: JSON (written atomically), human tables (rich, on stderr), and matplotlib figures."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from .errors import HwfaultError


def _clean(obj):
    """Replace non-finite floats by None so the JSON is strict (RFC 8259)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise HwfaultError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(obj: dict, path: str | Path) -> None:
    """Write strict JSON to ``path`` atomically (``-`` = stdout)."""
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    _atomic_write(Path(path), lambda t: t.write_text(text))


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


def _save_fig(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        _atomic_write(path, lambda t: fig.savefig(t, format=fmt, dpi=130, bbox_inches="tight"))
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
