"""The report of a chip estimate as a page for people: HTML (figures inline) or Markdown (figure beside it).

Both read from top to bottom: what was measured, the chip in words, the bracket with what each
of its rows means, each fault alone, and how the accuracy moves with the severity of the faults.
Every label comes from :mod:`.labels`; no result key reaches the page.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..files import REPORT_SUFFIXES, atomic_write, check_output
from . import labels as L
from .figures import _save_fig, estimate_figure, plot_estimate

MAX_TENSORS = 8  # tensor names listed in full; beyond that, the first ones and a count

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1080px;margin:2em auto;
padding:0 1.2em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.lead{font-size:1.08em;color:#333}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;margin:.8em 0}td,th{padding:4px 10px;border-bottom:1px solid #e3e3e3;
vertical-align:top;text-align:left}th{font-weight:600;border-bottom:2px solid #bbb}.n{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}.note{color:#555;font-size:.92em}
td.bar{width:220px}td.bar span{display:block;height:.8em;margin-top:.3em;border-radius:2px}
tr.clean span{background:#999}tr.mc span{background:#1f77b4}tr.worst span{background:#d62728}
tr.floor span{background:#2ca02c}tr.group td{border-top:2px solid #ccc}td.label{white-space:nowrap}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto}figcaption{color:#555;font-size:.92em;margin-top:.4em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
.explain li{margin:.25em 0}footer{margin-top:2.5em;color:#666;font-size:.88em;border-top:1px solid #ddd;
padding-top:.6em}
"""


def _group(name: str) -> str:
    if name.startswith("Monte-Carlo"):
        return "mc"
    if name.startswith("worst case"):
        return "worst"
    if name.startswith("certified"):
        return "floor"
    return "clean"


def _preset_description(chip: dict) -> str:
    """The shipped preset's own description, when the chip is that preset (same format, same faults)."""
    try:
        from ..spec import list_chips, load_chip

        if chip.get("name") not in list_chips():
            return ""
        spec = load_chip(chip["name"])
        same = ([f.kind for f in spec.faults] == [f.get("kind") for f in chip.get("faults", [])]
                and spec.to_dict()["format"].get("kind") in (chip.get("format"), "int"))
        return spec.description if same else ""
    except Exception:  # noqa: BLE001 - a description is a nicety; the page stands without it
        return ""


def _tensors(chip: dict) -> str:
    names = list(chip.get("params") or [])
    shown = ", ".join(names[:MAX_TENSORS]) + (f" and {len(names) - MAX_TENSORS} more" if len(names) > MAX_TENSORS else "")
    return f"{chip['k']:,} weights in {len(names)} tensor{'s' if len(names) != 1 else ''}" + (f" ({shown})" if names else "")


def _coverage(cov: float) -> str:
    return (f"{cov:g}: the worst-case search and the certified floor cover the fault patterns that a chip "
            f"has with probability {100 * cov:g}%")


def _facts(d: dict) -> list[tuple[str, str]]:
    chip = d["chip"]
    return [("number format", L.number_format(chip["format"])), ("on the device", _tensors(chip)),
            ("coverage", _coverage(chip["coverage"]))]


def _summary(d: dict) -> str:
    """The page's first sentences: the headline figures of the bracket."""
    r, w, c = d["random"], d["worst_case"], d.get("certified") or {}
    out = (f"{d['model']} is {L.pct(r['accuracy_mean'])} accurate on a typical {d['chip']['name']} chip (the mean "
           f"of {r['trials']} simulated chips; {L.pct(r['accuracy_min'])} on the worst of them), against "
           f"{L.pct(d['clean']['accuracy'])} without faults.")
    if "skipped" in w:
        out += " The worst cases were not searched: " + w["skipped"] + "."
    else:
        worst = min(v["accuracy"] for k, v in w.items() if k in L.WORST_CASE)
        out += (f" The worst case found among the fault patterns a chip has with probability "
                f"{100 * d['chip']['coverage']:g}% is {L.pct(worst)}.")
    if c.get("accuracy") is not None:
        out += f" The certified floor, below which no such chip can score, is {L.pct(c['accuracy'])}."
    return out


EXPLAIN = [
    ("clean", "the model in float32 without faults; <em>stored</em>: in the chip's number format, faults off."),
    ("Monte-Carlo", ("{trials} simulated chips, each with its faults drawn at random as the chip specification "
                     "says. The mean is the typical chip; the 1st percentile and the minimum are the unlucky ones.")),
    ("worst case", ("the lowest accuracy that a search found among the fault patterns a chip has with probability "
                    "{cov}% (the covering set): one gradient step, several steps, and for bit flips and stuck cells "
                    "a search over which bits or cells fail. A real chip is rarely that unlucky; it shows how bad a "
                    "chip within the specification can be.")),
    ("certified floor", ("a proven lower bound over the whole covering set: no chip whose faults lie in it scores "
                         "lower (the note says why a chip has none).")),
]
ORDER = "certified floor &le; worst case &le; Monte-Carlo &le; clean"
ORDER_MD = "certified floor <= worst case <= Monte-Carlo <= clean"
AFTER = ("The true worst chip in the covering set lies between the certified floor and the worst case found. "
         "A wide gap between the Monte-Carlo figures and the worst case means that typical chips are fine "
         "but a rare pattern of faults is not.")

HIST_CAPTION = ("Each bar counts simulated chips by their accuracy; the vertical lines mark the bracket "
                "(where lines coincide, their markers at the top stay apart).")
SEV_CAPTION = ("The same chip with every fault scaled by the factor on the horizontal axis (x1 = the chip as "
               "specified): the Monte-Carlo mean (over fewer chips per point than above) and the one-step and "
               "multi-step worst cases. The shaded band is the gap between the typical chip and the worst case.")


def _sev_caption(d: dict) -> str:
    return SEV_CAPTION + " At x1: " + "; ".join(L.nominals(d)) + "."


def _footer(d: dict) -> str:
    from .. import __version__

    return (f"Data {d['data']}; gradient from {d['probe']}; seed {d['seed']}; multi-step worst case: "
            f"{d['steps']} steps; run time {d['seconds']} s. Generated by hwfault {__version__}.")


def _png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    _save_fig(fig, buf)
    return base64.b64encode(buf.getvalue()).decode()


def _html(d: dict) -> str:
    e = html.escape
    rows = L.bracket_rows(d)
    trs, last = [], None
    for name, acc, note in rows:
        g = _group(name)
        width = 0.0 if acc is None else max(0.0, min(100.0, 100 * acc))
        trs.append(f"<tr class='{g}{' group' if last not in (None, g) else ''}'><td class=label>{e(name)}</td>"
                   f"<td class=n>{e(L.pct(acc))}</td><td class=bar><span style='width:{width:.1f}%'></span></td>"
                   f"<td class=note>{e(note)}</td></tr>")
        last = g
    frs = "".join(f"<tr><td>{e(k)}</td><td class=n>{e(L.pct(m))}</td><td class=n>{e(L.pct(lo))}</td>"
                  f"<td>{e(w)}</td></tr>" for k, m, lo, w in L.fault_rows(d))
    cov = f"{100 * d['chip']['coverage']:g}"
    explain = "".join(f"<li><strong>{e(k)}</strong>: {v.format(trials=d['random']['trials'], cov=cov)}</li>"
                      for k, v in EXPLAIN)
    desc = _preset_description(d["chip"])
    faults = "".join(f"<li>{e(L.fault_words(f))}</li>" for f in d["chip"]["faults"]) or "<li>none</li>"
    facts = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _facts(d))
    hist = _png(estimate_figure(d, "histogram"))
    sev_fig = estimate_figure(d, "severity")
    title = f"hwfault: {d['model']} on {d['chip']['name']}"
    parts = [f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{CSS}</style></head><body>
<header><h1>{e(d['model'])} on chip <code>{e(d['chip']['name'])}</code></h1>
<p class=lead>{e(_summary(d))}</p></header>
<section id=chip><h2>The chip</h2>{f'<p>{e(desc)}.</p>' if desc else ''}
<p>Its faults, in the order they act on the stored weights:</p><ul>{faults}</ul><dl>{facts}</dl></section>
<section id=bracket><h2>The bracket</h2>
<table><thead><tr><th></th><th class=n>accuracy</th><th></th><th>note</th></tr></thead><tbody>{''.join(trs)}</tbody></table>
<p>How to read it, from the top:</p><ul class=explain>{explain}</ul>
<p>So <strong>{ORDER}</strong>. {e(AFTER)}</p>
<figure><img src="data:image/png;base64,{hist}" alt="Histogram of the accuracy of {d['random']['trials']} simulated chips, with the bracket marked">
<figcaption>{e(HIST_CAPTION)}</figcaption></figure></section>"""]
    if frs:
        parts.append(f"""<section id=faults><h2>Each fault alone</h2>
<p>The chip with only one of its faults switched on: which fault does the damage.</p>
<table><thead><tr><th>fault</th><th class=n>Monte-Carlo mean</th><th class=n>Monte-Carlo min</th><th>worst case</th></tr></thead>
<tbody>{frs}</tbody></table></section>""")
    if sev_fig is not None:
        parts.append(f"""<section id=severity><h2>Milder or worse faults</h2>
<figure><img src="data:image/png;base64,{_png(sev_fig)}" alt="Accuracy against the severity of the faults">
<figcaption>{e(_sev_caption(d))}</figcaption></figure></section>""")
    parts.append(f"<footer>{e(_footer(d))}</footer>\n</body></html>\n")
    return "\n".join(parts)


def _markdown(d: dict, figure_name: str) -> str:
    desc = _preset_description(d["chip"])
    md = [f"# {d['model']} on chip {d['chip']['name']}", "", _summary(d), "", "## The chip", ""]
    if desc:
        md += [desc + ".", ""]
    md += ["Its faults, in the order they act on the stored weights:", ""]
    md += [f"- {L.fault_words(f)}" for f in d["chip"]["faults"]] or ["- none"]
    md += ["", *[f"- **{k}**: {v}" for k, v in _facts(d)], "", "## The bracket", "",
           "| | accuracy | note |", "|---|---:|---|", *[f"| {n} | {L.pct(a)} | {t} |" for n, a, t in L.bracket_rows(d)],
           "", "How to read it, from the top:", ""]
    md += [f"- **{k}**: " + v.replace("<em>", "*").replace("</em>", "*").format(
        trials=d["random"]["trials"], cov=f"{100 * d['chip']['coverage']:g}") for k, v in EXPLAIN]
    md += ["", f"So **{ORDER_MD}**. {AFTER}", ""]
    rows = L.fault_rows(d)
    if rows:
        md += ["## Each fault alone", "", "| fault | Monte-Carlo mean | Monte-Carlo min | worst case |",
               "|---|---:|---:|---|", *[f"| {k} | {L.pct(m)} | {L.pct(lo)} | {w} |" for k, m, lo, w in rows], ""]
    md += [f"![The Monte-Carlo chips against the bracket, and the accuracy against the fault severity]({figure_name})",
           "", HIST_CAPTION + (" " + _sev_caption(d) if d["severity"]["factors"] else ""),
           "", _footer(d), ""]
    return "\n".join(md)


def write_report(result, path: str | Path) -> None:
    """An HTML (``.html``) or Markdown (``.md``, figure beside it) report of an estimate."""
    path = Path(path)
    check_output(path, what="--report", suffixes=REPORT_SUFFIXES)
    d = result.to_dict()
    if path.suffix.lower() == ".md":
        fig = path.with_suffix(".png")
        plot_estimate(result, fig)
        text = _markdown(d, fig.name)
    else:
        text = _html(d)
    atomic_write(path, lambda t: t.write_text(text, encoding="utf-8"), what="--report")
