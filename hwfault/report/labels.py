"""Words for people: the one place that turns result keys, fault kinds and numbers into labels.

Tables, figures and the HTML/Markdown report take every name they show from here, so no raw
key (``one_step``, ``bit_search``, ``stuck``) reaches a reader and a label changes in one place.
"""

from __future__ import annotations

import math

# ----------------------------------------------------------------------------- numbers


def _pct(v: float | None) -> str:
    """An accuracy or rate in [0, 1] as a percentage with one decimal, without the % sign ('-' if none)."""
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "inf" if v == math.inf else "nan"
    return f"{v:.3g}"


def pct(v: float | None) -> str:
    """``_pct`` with the % sign: ``95.4%`` (or ``-``)."""
    s = _pct(v)
    return s if s == "-" else f"{s}%"


def _g(v: float) -> str:
    """A number in 3 significant digits, exponents without padding: 1e-7, 0.0156, 86,400."""
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    s = f"{v:.3g}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m}e{int(e)}"
    return s


def rate(v: float) -> str:
    """A probability for people: 1.56%, 0.23%, 1e-7 (below 0.01% the percentage has too many zeros)."""
    return f"{100 * v:.3g}%" if v >= 1e-4 or v == 0 else _g(v)


def duration(seconds: float) -> str:
    """``5.2 hours``, ``1 day``, ``3.4 s``."""
    for unit, size in (("year", 365.25 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds / size
            return f"{n:,.3g} {unit}" + ("" if f"{n:,.3g}" == "1" else "s")
    return f"{seconds:.3g} s"


# ----------------------------------------------------------------------------- result keys

#: the worst cases of an estimate, as rows of the bracket
WORST_CASE = {"one_step": "worst case: one step", "multi_step": "worst case: multi-step",
              "bit_search": "worst case: bit search"}
#: the same where the context already says "worst case" (a legend, a list of worst cases)
WORST_CASE_SHORT = {"one_step": "one step", "multi_step": "multi-step", "bit_search": "bit search"}

#: (key, label) of the hardening summary (:func:`hwfault.analyses.harden.summary`), in bracket order
REPORT_KEYS = (("clean", "clean"), ("stored", "stored on the chip"), ("mc_mean", "Monte-Carlo mean"),
               ("mc_p01", "Monte-Carlo 1st percentile"), ("one_step", "worst case: one step"),
               ("multi_step", "worst case: multi-step"))

KEYS = {**WORST_CASE, **dict(REPORT_KEYS), "clean": "clean (float32)", "quantized": "stored on the chip",
        "random": "Monte-Carlo", "worst_case": "worst case", "certified": "certified floor",
        "accuracy_mean": "Monte-Carlo mean", "accuracy_p01": "Monte-Carlo 1st percentile",
        "accuracy_min": "Monte-Carlo min", "accuracy_max": "Monte-Carlo max"}


def label(key: str) -> str:
    """The words for a result key (an unknown key: its underscores as spaces, never the raw key)."""
    return KEYS.get(key, str(key).replace("_", " "))


def worst_case(key: str, short: bool = False) -> str:
    return (WORST_CASE_SHORT if short else WORST_CASE).get(key) or label(key)


CERTIFY_METHODS = {"ibp": "interval bound propagation (IBP)", "crown": "CROWN linear bounds",
                   "auto": "auto_LiRPA (best of IBP and CROWN)", "bab": "branch and bound"}


def certify_method(method: str | None) -> str:
    return CERTIFY_METHODS.get(method or "", method or "")


# ----------------------------------------------------------------------------- faults and chips

FAULT_KINDS = {"stuck": "stuck-at cells", "bitflip": "bit flips", "read": "read noise",
               "pcm": "PCM programming noise", "drift": "conductance drift",
               "additive": "additive programming noise", "multiplicative": "multiplicative programming noise",
               "quantization": "quantisation", "bitflip-scales": "bit flips in shared scales",
               "stuck-scales": "stuck bits in shared scales", "activation-bitflip": "activation bit flips",
               "activation-stuck": "stuck neurons", "periphery": "analog periphery (DAC, ADC, output noise)"}


def fault_kind(kind: str) -> str:
    """``stuck`` -> ``stuck-at cells``, ``bitflip`` -> ``bit flips``, ..."""
    return FAULT_KINDS.get(kind, str(kind).replace("_", " "))


#: the severity name of a fault (``FaultModel.severity_name``) in words
SEVERITY_NAMES = {"stuck rate": "stuck-cell rate", "BER": "bit error rate", "sigma": "sigma",
                  "t (s)": "time since programming", "flips": "flipped bits per chip", "step": "quantisation step",
                  "severity": "severity", "activation BER": "bit error rate per inference",
                  "stuck-neuron rate": "stuck-neuron rate"}


def severity_name(kind: str, name: str) -> str:
    if kind == "pcm":  # its severity is a scale of the device model's noise, not a sigma
        return "noise scale"
    return SEVERITY_NAMES.get(name, name)


_RELATIVE = {"max": "of max|w| per tensor", "max|w| per tensor": "of max|w| per tensor", "weight": "of |w|",
             "|w|": "of |w|"}


def severity_value(kind: str, name: str, value: float, fault: dict | None = None) -> str:
    """The nominal severity with its unit: ``1.56%``, ``1 day (86,400 s)``, ``3% of max|w| per tensor``."""
    if value is None:
        return "-"
    if kind == "pcm":
        return f"x{_g(value)} the device model"
    if name in ("stuck rate", "BER"):
        return rate(value)
    if name == "t (s)":
        return f"{duration(value)} ({_g(value)} s)" if value >= 60 else f"{_g(value)} s"
    if name == "flips":
        return f"{_g(value)}"
    if name == "sigma":
        rel = (fault or {}).get("relative_to") or ("|w|" if kind == "multiplicative" else "max")
        return f"{100 * value:.3g}% {_RELATIVE.get(rel, 'of ' + str(rel))}"
    return _g(value)


def nominal(kind: str, name: str, value: float, fault: dict | None = None) -> str:
    """``stuck-at cells: stuck-cell rate 10.8%`` (what x1 of the severity axis is, for one fault)."""
    if kind == "pcm":
        return f"{fault_kind(kind)}: {severity_value(kind, name, value, fault)}"
    if name == "flips" and value is not None:
        return f"{fault_kind(kind)}: {_g(value)} flipped bit{'' if value == 1 else 's'} per chip"
    return f"{fault_kind(kind)}: {severity_name(kind, name)} {severity_value(kind, name, value, fault)}"


def nominals(d: dict) -> list[str]:
    """:func:`nominal` of every fault of an estimate dict (its ``severity`` part)."""
    sev = d.get("severity") or {}
    faults = {f.get("kind"): f for f in (d.get("chip") or {}).get("faults", [])}
    names = sev.get("severity_name") or {}
    return [nominal(k, names.get(k, "severity"), v, faults.get(k)) for k, v in (sev.get("nominal") or {}).items()]


def fault_words(f: dict) -> str:
    """One fault of a chip (its ``describe()`` dict) as a sentence."""
    k = f.get("kind")
    if k == "bitflip":
        if f.get("count") is not None:
            n = f["count"]
            what = f"exactly {n:,} flipped bit{'s' if n != 1 else ''} per chip, at sites drawn uniformly over all stored bits"
        else:
            what = f"each stored bit flips with probability {rate(f.get('ber', 0))} (bit error rate)"
        mode = "redrawn for every inference" if f.get("mode") == "transient" else "fixed for a given chip"
        return f"{fault_kind(k)}: {what}; {mode}"
    if k == "stuck":
        cell = "one cell per stored bit" if f.get("granularity") == "bit" else "one cell per weight"
        out = f"{fault_kind(k)}: {rate(f.get('sa0', 0))} of cells stuck at 0 (SA0), {rate(f.get('sa1', 0))} stuck at 1 (SA1); {cell}"
        if f.get("granularity") != "bit":
            out += "; an SA0 weight reads 0, an SA1 weight " + (
                "reads 0" if f.get("sa1_value") == "zero" else "reads +-max|w| of its tensor")
        return out
    if k in ("additive", "multiplicative", "read"):
        sig = severity_value(k, "sigma", f.get("sigma", 0), f)
        when = "redrawn for every inference" if k == "read" else "drawn once when the chip is programmed"
        return f"{fault_kind(k)}: Gaussian, sigma = {sig}; {when}"
    if k == "pcm":
        return (f"{fault_kind(k)}: Gaussian, conductance-dependent (1% to 4.2% of g_max = {_g(f.get('g_max_uS', 25))} \u00b5S), "
                f"x{_g(f.get('noise_scale', 1))} the device model; drawn once when the chip is programmed")
    if k == "drift":
        t = f.get("t_s")
        nu = f.get("nu")
        nu = "the PCM model's drift exponents" if nu in (None, "PCM model") else (
            f"drift exponent nu ~ N({_g(nu['mean'])}, {_g(nu['std'])})" if isinstance(nu, dict) else str(nu))
        comp = "with global drift compensation" if f.get("compensation") else "without drift compensation"
        return (f"{fault_kind(k)}: read {severity_value(k, 't (s)', t) if t is not None else '-'} after programming "
                f"(t0 = {_g(f.get('t0_s', 20))} s), {nu}, {comp}")
    if k == "quantization":
        return "quantisation: the weights rounded to the chip's format"
    rest = ", ".join(f"{a.replace('_', ' ')} {v}" for a, v in f.items() if a != "kind")
    return fault_kind(k) + (f": {rest}" if rest else "")


def number_format(fmt: str) -> str:
    """``int8`` -> ``int8 (8-bit integers)``."""
    words = {"fp32": "32-bit IEEE floats", "fp16": "16-bit IEEE floats", "bf16": "bfloat16: 16-bit floats with fp32's range"}
    if fmt in words:
        return f"{fmt} ({words[fmt]})"
    if fmt.startswith("int") and fmt[3:].isdigit():
        return f"{fmt} ({fmt[3:]}-bit integers)"
    return fmt


def discrete_units(d: dict) -> str:
    """What the bit search's budget counts on this chip: flipped bits, stuck cells or both."""
    kinds = {f.get("kind") for f in (d.get("chip") or {}).get("faults", [])}
    units = [u for k, u in (("bitflip", "flipped bits"), ("stuck", "stuck cells")) if k in kinds]
    return " / ".join(units) or "flips/cells"


# ----------------------------------------------------------------------------- the bracket


def bracket_rows(d: dict) -> list[tuple[str, float | None, str]]:
    """(label, accuracy, note) of the bracket of an estimate dict, from clean down to the floor."""
    r, w = d["random"], d["worst_case"]
    lo, hi = r["accuracy_ci95"]
    rows = [("clean (float32)", d["clean"]["accuracy"], "no faults"),
            (f"stored as {d['chip']['format']}", d["quantized"]["accuracy"], "faults off"),
            ("Monte-Carlo mean", r["accuracy_mean"], f"95% CI {_pct(lo)}-{_pct(hi)}%, {r['trials']} chips"),
            ("Monte-Carlo 1st percentile", r["accuracy_p01"], ""),
            ("Monte-Carlo min", r["accuracy_min"], "")]
    nan = "one fault makes a stored value NaN/Inf"
    if "skipped" in w:
        rows.append(("worst case", None, w["skipped"]))
    else:
        os_, ms = w["one_step"], w["multi_step"]
        rows += [(WORST_CASE["one_step"], os_["accuracy"], nan if os_.get("nonfinite_candidate") else
                  f"first-order loss change {_num(os_['first_order'])}"),
                 (WORST_CASE["multi_step"], ms["accuracy"], nan if ms.get("nonfinite_candidate") else f"{ms['steps']} steps")]
    if "bit_search" in w:
        b = w["bit_search"]
        rows.append((WORST_CASE["bit_search"], b["accuracy"], nan if b.get("nonfinite_candidate") else
                     f"{b['flips']:,} of {b['budget']:,} {discrete_units(d)}"))
    if "certified" in d:
        c = d["certified"]
        rows.append(("certified floor", c.get("accuracy"),
                     certify_method(c.get("method")) if c.get("accuracy") is not None else f"none: {str(c.get('reason', '')).removeprefix('certify: ')}"))
    return rows


def fault_rows(d: dict) -> list[tuple[str, float | None, float | None, str]]:
    """(fault, Monte-Carlo mean, Monte-Carlo min, worst cases in words) for each fault alone."""
    out = []
    for f in d["faults"]:
        wc = f["worst_case"]
        worst = "skipped" if "skipped" in wc else ", ".join(
            f"{worst_case(k, short=True)} {pct(v['accuracy'])}" for k, v in wc.items())
        out.append((fault_kind(f["fault"]["kind"]), f["random"]["accuracy_mean"], f["random"]["accuracy_min"], worst))
    return out
