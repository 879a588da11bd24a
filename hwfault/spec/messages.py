"""Pydantic validation errors as one line: ``<source>: <field path>: <message>``.

:func:`validate` checks a parsed TOML table against :class:`~hwfault.spec.schema.ChipSpec` and raises
:class:`~hwfault.errors.SpecError` with at most three messages, e.g. ``chip.toml: faults[0].ber:
expected a probability in [0, 1], got 1.5``. A field's bounds, a fault kind's fields and the list of
fault kinds come from the schema and the fault registry, so a new kind gets the same messages.
"""

from __future__ import annotations

import re
from typing import get_args

from pydantic import BaseModel, ValidationError

from ..errors import SpecError, did_you_mean
from ..faults import registry
from ..faults.config import FaultConfig, num, show
from .protection import BY_KIND as PROTECTIONS, PROTECTION_KINDS
from .schema import FAULT_KINDS, ChipSpec, DeviceSpec, FormatSpec

__all__ = ["validate", "message"]


def _loc_model(loc: tuple) -> tuple[str, type[BaseModel] | None, str | None]:
    """(path, model owning the last field, last field name) for a pydantic error location."""
    by_kind = {k.kind: k.config for k in registry.kinds()}
    parts, model, owner, field = [], ChipSpec, None, None
    i = 0
    while i < len(loc):
        p = loc[i]
        if isinstance(p, int):
            parts.append(f"[{p}]")
            i += 1
            continue
        parts.append(("." if parts else "") + str(p))
        owner, field = model, str(p)
        nxt = None
        if model is ChipSpec and p in ("format", "device"):
            nxt = FormatSpec if p == "format" else DeviceSpec
        elif model is ChipSpec and p in ("faults", "protection") and i + 2 < len(loc) and isinstance(loc[i + 1], int):
            parts.append(f"[{loc[i + 1]}]")
            table = by_kind if p == "faults" else PROTECTIONS
            nxt = table.get(loc[i + 2]) if loc[i + 2] in table else None
            i += 3 if nxt is not None else 2
            model = nxt
            continue
        model = nxt
        i += 1
    return "".join(parts), owner, field


def _bounds(model: type[BaseModel] | None, field: str | None) -> str:
    """' in [0, 1]', ' >= 0', ... from the field's constraints."""
    if model is None or field not in getattr(model, "model_fields", {}):
        return ""
    lo = hi = None
    info = model.model_fields[field]
    metadata = list(info.metadata)
    if not metadata:  # an optional constrained number: the constraints sit inside the union
        for arg in get_args(info.annotation):
            for a in get_args(arg)[1:]:
                metadata += getattr(a, "metadata", [a])
    for m in metadata:
        for attr, side, br in (("ge", "lo", "["), ("gt", "lo", "("), ("le", "hi", "]"), ("lt", "hi", ")")):
            if getattr(m, attr, None) is not None:
                if side == "lo":
                    lo = (getattr(m, attr), br)
                else:
                    hi = (getattr(m, attr), br)
    if lo and hi:
        if (lo[0], hi[0]) == (0, 1):
            return f" probability in {lo[1]}0, 1{hi[1]}"
        return f" in {lo[1]}{num(lo[0])}, {num(hi[0])}{hi[1]}"
    if lo:
        return f" {'>=' if lo[1] == '[' else '>'} {num(lo[0])}"
    if hi:
        return f" {'<=' if hi[1] == ']' else '<'} {num(hi[0])}"
    return ""


_TYPE_WORDS = {"float_type": "a number", "float_parsing": "a number", "int_type": "an integer",
               "int_parsing": "an integer", "int_from_float": "an integer", "bool_type": "true or false",
               "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list (TOML array)",
               "model_type": "a table", "model_attributes_type": "a table", "dict_type": "a table"}


def _is_fault_config(owner) -> bool:
    return isinstance(owner, type) and issubclass(owner, FaultConfig) and "kind" in owner.model_fields


def message(err: dict) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) as ``<field path>: <message>``."""
    loc, typ, got = tuple(err["loc"]), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    path, owner, field = _loc_model(loc)
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        kind = got.get("kind") if isinstance(got, dict) else None
        where = f"{path}.kind"
        kinds, what = (PROTECTION_KINDS, "protection") if path.startswith("protection") else (FAULT_KINDS, "fault kind")
        if typ == "union_tag_not_found" or kind is None:
            return f"{where}: required field missing (choose from: {', '.join(kinds)})"
        if not isinstance(kind, str):
            return f"{where}: expected a string, one of {', '.join(kinds)}, got {show(kind)}"
        return f"{where}: unknown {what} '{kind}'{did_you_mean(kind, kinds)}"
    if typ == "missing":
        return f"{path}: required field missing"
    if typ == "extra_forbidden":
        choices = list(owner.model_fields) if owner is not None else []
        what = f" for a '{owner.model_fields['kind'].annotation.__args__[0]}' fault" \
            if _is_fault_config(owner) else ""
        return f"{path}: unknown field{what}{did_you_mean(field or '', choices)}"
    if typ == "finite_number":
        return f"{path}: expected a finite number, got {show(got)}"
    if typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        b = _bounds(owner, field)
        return f"{path}: expected a{b if b.startswith(' probability') else ' number' + b}, got {show(got)}"
    if typ in _TYPE_WORDS:
        want = _TYPE_WORDS[typ]
        if want == "a table" and path.startswith(("faults[", "protection[")):
            want = f"a table ([[{path.partition('[')[0]}]] entry)"
        return f"{path}: expected {want}, got {show(got)}"
    if typ == "literal_error":
        expected = ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(got, choices) if isinstance(got, str) else ""
        hint = hint if hint.startswith(" (did you mean") else ""
        return f"{path}: expected {expected}, got {show(got)}{hint}"
    msg = err.get("msg", "")
    if typ == "value_error":
        msg = msg.removeprefix("Value error, ")
        m = re.match(r"\[(\d+)\]((?:\.\w+)?)\x00", msg)  # an item index (and field) from hwfault.faults.config.fail
        if m:
            path, msg = f"{path}[{m.group(1)}]{m.group(2)}", msg[m.end():]
    return f"{path}: {msg}"


def validate(data: dict, source: str) -> ChipSpec:
    """``data`` as a :class:`ChipSpec`, or a :class:`SpecError` naming ``source`` and the fields."""
    try:
        return ChipSpec.model_validate(data)
    except ValidationError as e:
        # schema_version first (a spec for another schema fails everywhere), then unknown fields before
        # missing ones (a misspelt key shows up as both; the misspelling is the useful message)
        errs = sorted(e.errors(), key=lambda r: (r["loc"][:1] != ("schema_version",), r["type"] == "missing"))
        msgs = [message(err) for err in errs[:3]]
        more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
        raise SpecError(f"{source}: {'; '.join(msgs)}{more}") from None
