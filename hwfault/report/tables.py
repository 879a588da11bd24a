"""Tables for people: rich tables printed on stderr (stdout stays free for ``--json -``)."""

from __future__ import annotations

from .labels import REPORT_KEYS, _num, _pct, bracket_rows, duration, fault_kind, pct, worst_case

_bracket_rows = bracket_rows
_duration = duration


def print_table(table) -> None:
    from rich.console import Console

    Console(stderr=True, width=max(100, Console(stderr=True).width)).print(table)


def sweep_table(result):
    """A rich Table of a :class:`~hwfault.sweep.SweepResult`."""
    from rich.table import Table

    d = result.to_dict()
    t = Table(title=f"{d['model']} on {d['data']}: L{d['norm']} corruption, n = {d['n']} of k = {d['k']:,} "
                    f"(clean {_pct(d['clean']['accuracy'])}%; gradient from {d['probe']})")
    metric = _task_metric(d)
    cols = ("method", "eps", *((metric,) if metric else ()), "accuracy %", "min-max %", "loss change", "first order")
    for col in cols:
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in d["results"]:
        rng = (f"{_pct(r['accuracy_min'])}-{_pct(r['accuracy_max'])}" if "accuracy_min" in r else "")
        t.add_row(r["method"], f"{r['eps']:g}", *((_metric_cell(r.get(metric)),) if metric else ()), _pct(r["accuracy"]), rng,
                  _num(r["loss_change"]), _num(r["first_order"]) if "first_order" in r else "")
    return t


def _metric_cell(v) -> str:
    return "-" if v is None else _num(v)


def _task_metric(d: dict) -> str | None:
    """The headline metric of a result's task when it is not accuracy (perplexity, mse, ...)."""
    task = d.get("task") or {}
    m = task.get("metric")
    return m if m and m != "accuracy" else None


def _bracket_metric(d: dict, metric: str) -> list:
    """The task's metric beside each row of :func:`bracket_rows` (the worst Monte-Carlo trials are the
    highest for a lower-is-better metric)."""
    r, w = d["random"], d["worst_case"]
    worst_q = "p01" if (d.get("task") or {}).get("higher_is_better", True) else "p99"
    vals = [d["clean"].get(metric), d["quantized"].get(metric), r.get(f"{metric}_mean"), r.get(f"{metric}_{worst_q}"),
            r.get(f"{metric}_worst")]
    if "skipped" in w:
        vals.append(None)
    else:
        vals += [w["one_step"].get(metric), w["multi_step"].get(metric)]
    if "bit_search" in w:
        vals.append(w["bit_search"].get(metric))
    if "certified" in d:
        vals.append(None)
    return vals


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


# ----------------------------------------------------------------------------- chip estimates


def estimate_table(result):
    from rich.table import Table

    d = result.to_dict()
    t = Table(title=f"{d['model']} on {d['data']}, chip {d['chip']['name']} "
                    f"({d['chip']['format']}, {d['chip']['k']:,} weights on the device; coverage {d['chip']['coverage']})")
    metric = _task_metric(d)
    t.add_column("")
    if metric:
        t.add_column(metric, justify="right")
    t.add_column("accuracy %", justify="right")
    t.add_column("note")
    extra = _bracket_metric(d, metric) if metric else None
    for i, (name, acc, note) in enumerate(bracket_rows(d)):
        t.add_row(name, *((_metric_cell(extra[i]),) if metric else ()), _pct(acc), note)
    for f in d["faults"]:
        wc = f["worst_case"]
        worst = None if "skipped" in wc else min(wc.items(), key=lambda kv: kv[1]["accuracy"])
        t.add_row(f"  {fault_kind(f['fault']['kind'])} alone", _pct(f["random"]["accuracy_mean"]),
                  "Monte-Carlo mean" + ("" if worst is None else
                                        f"; worst case {pct(worst[1]['accuracy'])} ({worst_case(worst[0], short=True)})"))
    return t


# ----------------------------------------------------------------------------- campaigns


def plan_table(plan, estimate: dict | None = None, workers: int = 1):
    from rich.table import Table

    from ..validate import MAX_CAMPAIGN_TRIALS

    d = plan.to_dict()
    pop = "infinite (fault patterns)" if d["population"] is None else f"{d['population']:,} (sites x bits)"
    sizing = (f"margin {d['margin']} at {d['confidence']:.0%} confidence (Leveugle et al. 2009)"
              if d["margin"] is not None else "trials given")
    title = f"campaign plan: {d['planned_trials']:,} trials; {d['mode']}; population {pop}; {sizing}"
    if estimate is not None:
        title += (f"\nestimated time: {duration(estimate['estimated_seconds'] / max(workers, 1))} "
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


# ----------------------------------------------------------------------------- hardening and certification


def hardening_table(d: dict):
    """Base vs hardened on the chip (the ``summary`` of :func:`hwfault.harden.hardening_report`)."""
    from rich.table import Table

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


def export_table(rep):
    """What ``hwfault export`` checked (an :class:`~hwfault.export.ExportReport`)."""
    from rich.table import Table

    t = Table(title=f"{rep.path}: {rep.format} via {rep.exporter}, opset {rep.opset}, {rep.size_bytes:,} bytes")
    t.add_column("check")
    t.add_column("value", justify="right")
    t.add_row("onnx.checker", "passed")
    t.add_row(f"max |delta logit| vs {rep.reference}", f"{rep.max_abs_delta:.2e}")
    t.add_row("prediction agreement", f"{100 * rep.agreement:.2f}%")
    t.add_row("accuracy torch / onnxruntime", f"{_pct(rep.reference_accuracy)} / {_pct(rep.onnx_accuracy)}")
    if rep.float_accuracy is not None:
        t.add_row("float model accuracy / agreement", f"{_pct(rep.float_accuracy)} / {100 * rep.float_agreement:.2f}%")
    rb = rep.metadata.get("robustness")
    if isinstance(rb, dict):
        t.add_row(f"on {rb['chip']}: Monte-Carlo mean / worst case", f"{_pct(rb['mc_mean'])} / {_pct(rb['multi_step'])}")
    t.add_row("parity", "passed" if rep.passed else "FAILED: " + "; ".join(rep.failures))
    return t


def zoo_table(rows: list[dict]):
    """The zoo models (rows of ``hwfault zoo list --json``)."""
    from rich.table import Table

    t = Table(title="hwfault model zoo (models/)")
    for col in ("name", "data", "task", "params", "test score", "architecture"):
        t.add_column(col)
    for r in rows:
        if not r["trained"]:
            score = "untrained"
        elif r.get("test_perplexity") is not None:
            score = f"perplexity {r['test_perplexity']:.2f} ({100 * r['test_accuracy']:.1f}% tokens)"
        else:
            score = f"{100 * r['test_accuracy']:.2f}% accuracy"
        t.add_row(r["name"], r["data"], r.get("task", "classification"),
                  f"{r['parameters']:,}" if r["parameters"] else "-", score, r["description"])
    return t


def chips_table(specs) -> object:
    """The chip presets (ChipSpecs)."""
    from rich.table import Table

    t = Table(title="hwfault chip presets")
    for col in ("name", "format", "faults", "description"):
        t.add_column(col)
    for c in specs:
        t.add_row(c.name, c.format.kind, ", ".join(f.kind for f in c.faults) or "-", c.description)
    return t


def bits_text(d: dict) -> str:
    """The three lines ``hwfault bits`` prints (from its JSON)."""
    until = d["until"]
    flips = d["flips"] if d["flips"] is not None else f"> {d['max_flips']} (not reached)"
    rnd = f"{d['random_flips']:g}" if d["random_flips"] is not None else "not reached in most runs"
    metric = _task_metric(d)
    if d.get("target") == "scales":
        flips, rnd = f"{flips} (scale bits)", f"{rnd} (scale bits)"
    if metric:  # perplexity, mse: the target is a rise
        factor = f" ({d['until_factor']:g}x the quantised model)" if d.get("until_factor") else ""
        return (f"{d['model']} stored as {d['format']}: clean {metric} {_num(d['clean'].get(metric))}, "
                f"quantised {_num(d['quantized'].get(metric))}\n"
                f"  worst-case flips to {metric} >= {_num(until)}{factor}: {flips}  ({metric} after each: "
                f"{', '.join(_num(a) for a in d['history'])})\n"
                f"  random flips to {metric} >= {_num(until)} (median of {len(d['random_runs'])}): {rnd}  "
                f"runs {d['random_runs']}")
    return (f"{d['model']} stored as {d['format']}: clean {100 * d['clean']['accuracy']:.1f}%, "
            f"quantised {100 * d['quantized']['accuracy']:.1f}%\n"
            f"  worst-case flips to <= {100 * until:.1f}%: {flips}  (accuracy after each: "
            f"{', '.join(f'{100 * a:.1f}' for a in d['history'])})\n"
            f"  random flips to <= {100 * until:.1f}% (median of {len(d['random_runs'])}): {rnd}  "
            f"runs {d['random_runs']}")
