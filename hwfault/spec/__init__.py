"""Chip specifications: a validated, frozen description of an accelerator, in TOML.

A spec names the weight number format, which parameters live on the device, the faults (applied
in the listed order, after the weights are stored in the format), and the coverage of the
worst-case set. Presets ship as ``hwfault/chips/NAME.toml``; :func:`load_chip` takes a preset name
or a path. Every invalid spec raises :class:`~hwfault.errors.SpecError` with one line
``<source>: <field path>: <message>``, e.g. ``chip.toml: faults[0].ber: expected a probability in
[0, 1], got 1.5``.

A minimal spec::

    name = "my-chip"
    [format]
    kind = "int8"            # fp32 | fp16 | bf16 | int2 .. int16
    scale = "per-channel"    # int formats only; default "per-tensor"
    [[faults]]
    kind = "bitflip"
    ber = 1e-4
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import SpecError, did_you_mean
from ..formats import FORMATS
from ..params import TAGS

__all__ = ["SCHEMA_VERSION", "CHIPS_DIR", "FAULT_KINDS", "ChipSpec", "FormatSpec", "DeviceSpec", "Fault",
           "AdditiveFault", "MultiplicativeFault", "PCMFault", "ReadFault", "DriftFault", "BitFlipFault",
           "StuckFault", "load_chip", "list_chips", "parse_chip", "describe_chip"]

SCHEMA_VERSION = 1
CHIPS_DIR = Path(__file__).resolve().parent.parent / "chips"

# Scalars are strict: TOML has real types, so "0.5" or true where a number belongs is an error,
# not a silent conversion. Integers are accepted where a float belongs.
NonNeg = Annotated[float, Field(strict=True, ge=0)]
Pos = Annotated[float, Field(strict=True, gt=0)]
Prob = Annotated[float, Field(strict=True, ge=0, le=1)]
Text = Annotated[str, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]

_FORMAT_ALIASES = {"float32": "fp32", "float": "fp32", "single": "fp32", "float16": "fp16", "half": "fp16",
                   "bfloat16": "bf16", "uint8": "int8", "int": "int8"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FormatSpec(_Model):
    """How the chip stores a weight: ``fp32`` / ``fp16`` / ``bf16`` or ``intN`` (N in 2..16, symmetric,
    one scale per tensor or per output channel)."""

    kind: Text
    scale: Literal["per-tensor", "per-channel"] = "per-tensor"

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v in FORMATS:
            return v
        alias = v.lower() if v.lower() in FORMATS else _FORMAT_ALIASES.get(v.lower())
        if alias:
            _fail(f"unknown number format '{v}' (did you mean '{alias}'?)")
        if re.fullmatch(r"u?int\d+", v.lower()):
            _fail(f"expected an integer format int2 .. int16, got '{v}'")
        hint = did_you_mean(v, FORMATS) or " (choose from: fp32, fp16, bf16, int2 .. int16)"
        _fail(f"unknown number format '{v}'{hint}")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if v == "per-channel" and kind is not None and not kind.startswith("int"):
            _fail(f"expected 'per-tensor' for the float format '{kind}' (per-channel scales apply to int "
                  f"formats), got 'per-channel'")
        return v

    @property
    def is_int(self) -> bool:
        return self.kind.startswith("int")


class DeviceSpec(_Model):
    """Which parameters live on the device: component ``types`` (conv, linear, norm, embedding,
    attention, recurrent; ``[]`` = any), name ``params`` globs (``[]`` = any; both filters AND-ed), and
    ``weights_only`` (only tensors named ``weight``, not biases or norm parameters)."""

    types: list[Text] = ["conv", "linear"]
    params: list[Text] = []
    weights_only: Flag = True

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in TAGS:
                _fail(f"unknown component type '{t}'{did_you_mean(t, TAGS)}")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: list[str]) -> list[str]:
        for i, g in enumerate(v):
            if not g.strip():
                _fail("expected a parameter-name glob such as 'features.*', got ''", index=i)
        return v


class _Fault(_Model):
    source: Text = ""


class AdditiveFault(_Fault):
    """Gaussian programming noise, drawn once per programming: std = sigma * max|w| of each tensor
    (the conductance range)."""

    kind: Literal["additive"]
    sigma: NonNeg


class MultiplicativeFault(_Fault):
    """Gaussian programming noise, drawn once per programming: std = sigma * |w| per element."""

    kind: Literal["multiplicative"]
    sigma: NonNeg


class PCMFault(_Fault):
    """PCM-like conductance-dependent programming noise (IBM aihwkit, facts.md section 5):
    sigma(g) = 0.26348 + 1.9650 g^ - 1.1731 g^^2 uS at g^ = g / g_max; ``g_max`` in uS."""

    kind: Literal["pcm"]
    g_max: Pos = 25.0


class ReadFault(_Fault):
    """Gaussian read noise, redrawn for every inference: std = sigma * max|w| (``relative_to = "max"``)
    or sigma * |w| (``"weight"``)."""

    kind: Literal["read"]
    sigma: NonNeg
    relative_to: Literal["max", "weight"] = "max"


class DriftFault(_Fault):
    """Conductance drift g(t) = g_prog (t / t0)^-nu, ``t`` and ``t0`` in seconds since programming;
    nu ~ N(nu_mean, nu_std), by default (None) the PCM conductance-dependent model of facts.md
    section 5; ``compensation`` = global drift compensation (one rescaling per tensor)."""

    kind: Literal["drift"]
    t: Pos
    t0: Pos = 20.0
    compensation: Flag = True
    nu_mean: NonNeg | None = None
    nu_std: NonNeg | None = None


class BitFlipFault(_Fault):
    """Independent flips of the stored bits at bit error rate ``ber``: ``persistent`` (a faulty cell,
    drawn once per chip) or ``transient`` (redrawn for every inference). With ``count`` instead of
    ``ber``: exactly that many flips per chip at distinct sites drawn uniformly over all stored bits
    (classic statistical fault injection; the fault population is sites x bits)."""

    kind: Literal["bitflip"]
    ber: Prob | None = None
    count: Annotated[int, Field(strict=True, ge=1)] | None = None
    mode: Literal["persistent", "transient"] = "persistent"

    @model_validator(mode="after")
    def _ber_or_count(self):
        if (self.ber is None) == (self.count is None):
            raise ValueError("expected exactly one of ber (a bit error rate) or count (flips per chip), got "
                             + ("both" if self.ber is not None else "neither"))
        return self


class StuckFault(_Fault):
    """Stuck-at cells at rates ``sa0`` and ``sa1`` (sa0 + sa1 <= 1). ``granularity = "weight"``: a stuck
    weight reads 0 (SA0) or, for SA1, +-max|w| of its tensor (``sa1_value = "max"``, the sign of the
    stuck device of the differential pair) or 0 (``"zero"``). ``"bit"``: the stored bit reads 0 / 1."""

    kind: Literal["stuck"]
    sa0: Prob = 0.0
    sa1: Prob = 0.0
    granularity: Literal["weight", "bit"] = "weight"
    sa0_value: Literal["zero"] = "zero"
    sa1_value: Literal["max", "zero"] = "max"

    @model_validator(mode="after")
    def _total(self) -> StuckFault:
        if self.sa0 + self.sa1 > 1 + 1e-12:
            total = _show(self.sa0 + self.sa1)
            _fail(f"expected sa0 + sa1 <= 1, got {_show(self.sa0)} + {_show(self.sa1)} = {total}")
        return self


_FAULT_CLASSES = (AdditiveFault, MultiplicativeFault, PCMFault, ReadFault, DriftFault, BitFlipFault, StuckFault)
FAULT_KINDS: tuple[str, ...] = tuple(c.model_fields["kind"].annotation.__args__[0] for c in _FAULT_CLASSES)
_BY_KIND = dict(zip(FAULT_KINDS, _FAULT_CLASSES))

Fault = Annotated[Union[AdditiveFault, MultiplicativeFault, PCMFault, ReadFault, DriftFault, BitFlipFault,
                        StuckFault], Field(discriminator="kind")]


class ChipSpec(_Model):
    """A chip: weight number format, device selection, faults (in order) and the coverage of the
    worst-case set (the probability that it contains a random realisation of the faults)."""

    schema_version: Annotated[int, Field(strict=True)] = SCHEMA_VERSION
    name: Text
    description: Text = ""
    references: list[Text] = []
    coverage: Annotated[float, Field(strict=True, gt=0, lt=1)] = 0.999
    format: FormatSpec
    device: DeviceSpec = DeviceSpec()
    faults: list[Fault] = []

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            _fail(f"expected schema_version {SCHEMA_VERSION}, got {v} (a spec for another version of hwfault)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip() or v != v.strip() or "\n" in v:
            _fail(f"expected a non-empty one-line name without surrounding spaces, got {_show(v)}")
        return v

    def to_dict(self) -> dict:
        """JSON-ready dictionary (``model_dump(mode="json")``)."""
        return self.model_dump(mode="json")

    def to_toml(self) -> str:
        """The spec as TOML; ``parse_chip(spec.to_toml()) == spec``."""
        d = self.to_dict()
        out = []
        for k in ("schema_version", "name", "description", "references", "coverage"):
            v = d[k]
            if k == "references" and v:
                out.append("references = [\n" + "".join(f"  {_toml_value(r)},\n" for r in v) + "]")
            else:
                out.append(f"{k} = {_toml_value(v)}")
        for table in ("format", "device"):
            out += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in d[table].items()]
        for f in d["faults"]:
            keys = ["kind"] + [k for k in f if k not in ("kind", "source")] + ["source"]
            out += ["", "[[faults]]"] + [f"{k} = {_toml_value(f[k])}" for k in keys if f[k] is not None]
        return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- TOML writing

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_value(v: Any) -> str:
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
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# ----------------------------------------------------------------------------- errors


def _fail(msg: str, index: int | None = None):
    # pydantic keeps only the message of a ValueError; an item index goes in a prefix we strip later
    raise ValueError(f"[{index}]\x00{msg}" if index is not None else msg)


def _show(v: Any) -> str:
    """A value as the user wrote it in TOML (strings quoted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:57] + "..."
        return "'" + s.replace("\n", "\\n") + "'"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, (list, tuple)):
        s = "[" + ", ".join(_show(x) for x in v) + "]"
        return s if len(s) <= 60 else s[:57] + "...]"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _num(x: float) -> str:
    return f"{x:g}"


def _loc_model(loc: tuple) -> tuple[str, type[BaseModel] | None, str | None]:
    """(path, model owning the last field, last field name) for a pydantic error location."""
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
        elif model is ChipSpec and p == "faults" and i + 2 < len(loc) and isinstance(loc[i + 1], int):
            parts.append(f"[{loc[i + 1]}]")
            nxt = _BY_KIND.get(loc[i + 2]) if loc[i + 2] in _BY_KIND else None
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
        return f" in {lo[1]}{_num(lo[0])}, {_num(hi[0])}{hi[1]}"
    if lo:
        return f" {'>=' if lo[1] == '[' else '>'} {_num(lo[0])}"
    if hi:
        return f" {'<=' if hi[1] == ']' else '<'} {_num(hi[0])}"
    return ""


_TYPE_WORDS = {"float_type": "a number", "float_parsing": "a number", "int_type": "an integer",
               "int_parsing": "an integer", "int_from_float": "an integer", "bool_type": "true or false",
               "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list (TOML array)",
               "model_type": "a table", "model_attributes_type": "a table", "dict_type": "a table"}


def _message(err: dict) -> str:
    loc, typ, got = tuple(err["loc"]), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    path, owner, field = _loc_model(loc)
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        kind = got.get("kind") if isinstance(got, dict) else None
        where = f"{path}.kind"
        if typ == "union_tag_not_found" or kind is None:
            return f"{where}: required field missing (choose from: {', '.join(FAULT_KINDS)})"
        if not isinstance(kind, str):
            return f"{where}: expected a string, one of {', '.join(FAULT_KINDS)}, got {_show(kind)}"
        return f"{where}: unknown fault kind '{kind}'{did_you_mean(kind, FAULT_KINDS)}"
    if typ == "missing":
        return f"{path}: required field missing"
    if typ == "extra_forbidden":
        choices = list(owner.model_fields) if owner is not None else []
        what = f" for a '{owner.model_fields['kind'].annotation.__args__[0]}' fault" \
            if owner in _FAULT_CLASSES else ""
        return f"{path}: unknown field{what}{did_you_mean(field or '', choices)}"
    if typ == "finite_number":
        return f"{path}: expected a finite number, got {_show(got)}"
    if typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        b = _bounds(owner, field)
        return f"{path}: expected a{b if b.startswith(' probability') else ' number' + b}, got {_show(got)}"
    if typ in _TYPE_WORDS:
        want = _TYPE_WORDS[typ]
        if want == "a table" and path.startswith("faults["):
            want = "a table ([[faults]] entry)"
        return f"{path}: expected {want}, got {_show(got)}"
    if typ == "literal_error":
        expected = ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(got, choices) if isinstance(got, str) else ""
        hint = hint if hint.startswith(" (did you mean") else ""
        return f"{path}: expected {expected}, got {_show(got)}{hint}"
    msg = err.get("msg", "")
    if typ == "value_error":
        msg = msg.removeprefix("Value error, ")
        m = re.match(r"\[(\d+)\]\x00", msg)
        if m:
            path, msg = f"{path}[{m.group(1)}]", msg[m.end():]
    return f"{path}: {msg}"


def _validate(data: dict, source: str) -> ChipSpec:
    try:
        return ChipSpec.model_validate(data)
    except ValidationError as e:
        # schema_version first (a spec for another schema fails everywhere), then unknown fields before
        # missing ones (a misspelt key shows up as both; the misspelling is the useful message)
        errs = sorted(e.errors(), key=lambda r: (r["loc"][:1] != ("schema_version",), r["type"] == "missing"))
        msgs = [_message(err) for err in errs[:3]]
        more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
        raise SpecError(f"{source}: {'; '.join(msgs)}{more}") from None


# ----------------------------------------------------------------------------- loading


def parse_chip(text: str, source: str = "<string>") -> ChipSpec:
    """Parse and validate a chip spec from TOML text; ``source`` names it in error messages."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), source)
    if not isinstance(text, str):
        raise SpecError(f"{source}: expected TOML text, got {type(text).__name__}")
    if not text.strip():
        raise SpecError(f"{source}: empty chip spec (expected TOML with at least 'name' and a [format] table)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {' '.join(str(e).split())}") from None
    if not data:
        raise SpecError(f"{source}: empty chip spec (expected TOML with at least 'name' and a [format] table)")
    return _validate(data, source)


def _decode(raw: bytes, source: str) -> str:
    if b"\x00" in raw:
        raise SpecError(f"{source}: binary file, expected a TOML chip spec (UTF-8 text)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"{source}: not UTF-8 text (byte {e.start}), expected a TOML chip spec") from None


def list_chips() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in CHIPS_DIR.glob("*.toml"))


def _read_file(path: Path) -> ChipSpec:
    if path.is_dir():
        raise SpecError(f"{path}: a directory, expected a chip .toml file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"{path}: cannot read chip file ({e.strerror or e})") from None
    return parse_chip(_decode(raw, str(path)), str(path))


def load_chip(name_or_path: str | Path) -> ChipSpec:
    """A chip spec: a preset name (see :func:`list_chips`) or a path to a ``.toml`` file.

    A string that names a preset and contains no path separator or ``.toml`` suffix is the preset;
    anything else is a path. A :class:`ChipSpec` is returned unchanged.
    """
    if isinstance(name_or_path, ChipSpec):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise SpecError(f"expected a chip preset name or a path to a .toml file, got {type(name_or_path).__name__}")
    key = str(name_or_path)
    if not key.strip():
        raise SpecError("expected a chip preset name (hwfault chips list) or a path to a .toml file, got ''")
    looks_like_path = isinstance(name_or_path, Path) or key.endswith(".toml") or "/" in key or "\\" in key
    if not looks_like_path and key in list_chips():
        preset = CHIPS_DIR / f"{key}.toml"
        spec = _read_file(preset)
        if spec.name != key:
            raise SpecError(f"{preset}: name: expected '{key}' (the preset's file name), got '{spec.name}'")
        return spec
    path = Path(key).expanduser()
    if path.exists():
        return _read_file(path)
    if looks_like_path or not key:
        raise SpecError(f"chip file not found: {key}")
    raise SpecError(f"unknown chip preset '{key}'{did_you_mean(key, list_chips())}; "
                    f"give a preset name (hwfault chips list) or a path to a .toml file")


# ----------------------------------------------------------------------------- human summary


_GLOSS = {
    "additive": lambda f: f"Gaussian, std {_num(f.sigma)} x max|w| per tensor, drawn once at programming",
    "multiplicative": lambda f: f"Gaussian, std {_num(f.sigma)} x |w|, drawn once at programming",
    "pcm": lambda f: "PCM conductance-dependent programming noise, drawn once",
    "read": lambda f: f"Gaussian, std {_num(f.sigma)} x {'max|w| per tensor' if f.relative_to == 'max' else '|w|'}, "
                      f"redrawn every inference",
    "drift": lambda f: f"{_seconds(f.t)} after programming"
                       + (", nu from the PCM model" if f.nu_mean is None and f.nu_std is None else "")
                       + (", global compensation" if f.compensation else ", uncompensated"),
    "bitflip": lambda f: "stored bits flip; " + ("faulty cells fixed per chip" if f.mode == "persistent"
                                                 else "redrawn every inference"),
    "stuck": lambda f: ("SA0 weight reads 0, SA1 weight reads " + ("+-max|w|" if f.sa1_value == "max" else "0"))
                       if f.granularity == "weight" else "a stuck stored bit reads 0 (SA0) or 1 (SA1)",
}


def _seconds(t: float) -> str:
    for unit, n in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if t >= n:
            return f"{_num(round(t / n, 2))} {unit if t != n else unit[:-1]}"
    return f"{_num(t)} s"


def _fault_line(f) -> str:
    """``kind: field value, ... (what it means)  [source]``."""
    fields = {k: v for k, v in f.model_dump().items() if k not in ("kind", "source") and v is not None}
    units = {"g_max": " uS", "t": " s", "t0": " s"}
    nums = ", ".join(f"{k} {_num(v) if isinstance(v, float) else _show(v) if not isinstance(v, str) else v}"
                     f"{units.get(k, '')}" for k, v in fields.items())
    return f"{f.kind}: {nums} ({_GLOSS[f.kind](f)})" + (f"  [{f.source}]" if f.source else "")


def describe_chip(spec: ChipSpec) -> str:
    """A short human-readable summary (for ``hwfault chips show``)."""
    fmt = spec.format.kind + (f", {spec.format.scale} scale" if spec.format.is_int else "")
    dev = spec.device
    where = (", ".join(dev.types) + " layers") if dev.types else "all layer types"
    if dev.params:
        where += f", params matching {', '.join(dev.params)}"
    where += "; weights only" if dev.weights_only else "; all parameters (weights, biases, norms)"
    lines = [f"{spec.name}" + (f": {spec.description}" if spec.description else ""),
             f"  format:     {fmt}",
             f"  device:     {where}",
             f"  coverage:   {_num(spec.coverage)} (probability that the worst-case set contains a realisation)"]
    if spec.faults:
        lines.append("  faults (in order, after storage in the format):")
        lines += [f"    {i}. {_fault_line(f)}" for i, f in enumerate(spec.faults, 1)]
    else:
        lines.append("  faults:     none (storage in the format only)")
    if spec.references:
        lines.append("  references:")
        lines += [f"    - {r}" for r in spec.references]
    return "\n".join(lines)
