"""Writing a chip spec as TOML (the standard library only reads TOML).

:func:`chip_toml` writes the ``to_dict()`` of a :class:`~hwfault.spec.ChipSpec`: top-level keys
first, then ``[format]``, ``[device]`` and one ``[[faults]]`` table per fault (``kind`` first,
``source`` last, unset optional fields left out), so that ``parse_chip(spec.to_toml()) == spec``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["chip_toml", "toml_value"]

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_value(v: Any) -> str:
    """One TOML value: booleans, integers, floats (shortest round-tripping form), strings, arrays."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if v != v else ("inf" if v > 0 else "-inf")
        return repr(v)  # shortest round-tripping form, e.g. 1e-06, 0.999, 86400.0: all valid TOML floats
    if isinstance(v, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def chip_toml(d: dict) -> str:
    """The TOML text of a chip spec's ``to_dict()``."""
    out = []
    for k in ("schema_version", "name", "description", "references", "coverage"):
        v = d[k]
        if k == "references" and v:
            out.append("references = [\n" + "".join(f"  {toml_value(r)},\n" for r in v) + "]")
        else:
            out.append(f"{k} = {toml_value(v)}")
    for table in ("format", "device", "activations"):
        if table in d:  # ([activations] only where the spec has it)
            out += ["", f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in d[table].items()]
    for f in d["faults"]:
        keys = ["kind"] + [k for k in f if k not in ("kind", "source")] + ["source"]
        out += ["", "[[faults]]"] + [f"{k} = {toml_value(f[k])}" for k in keys if f[k] is not None]
    for f in d.get("protection", ()):
        keys = ["kind"] + [k for k in f if k not in ("kind", "source")] + ["source"]
        out += ["", "[[protection]]"] + [f"{k} = {toml_value(f[k])}" for k in keys if f[k] is not None]
    return "\n".join(out) + "\n"
