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

The package: :mod:`.schema` (ChipSpec, FormatSpec, DeviceSpec; the ``[[faults]]`` union comes from
the fault registry, :mod:`hwfault.faults.registry`), :mod:`.messages` (pydantic errors as one line),
:mod:`.toml` (the TOML writer), :mod:`.summary` (``describe_chip``) and, here, loading.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import SpecError, did_you_mean
from ..faults.analog import AdditiveFault, MultiplicativeFault, PCMFault, ReadFault
from ..faults.bitflip import BitFlipFault
from ..faults.drift import DriftFault
from ..faults.stuck import StuckFault
from .messages import validate
from .schema import FAULT_KINDS, SCHEMA_VERSION, ChipSpec, DeviceSpec, Fault, FormatSpec
from .summary import describe_chip

__all__ = ["SCHEMA_VERSION", "CHIPS_DIR", "FAULT_KINDS", "ChipSpec", "FormatSpec", "DeviceSpec", "Fault",
           "AdditiveFault", "MultiplicativeFault", "PCMFault", "ReadFault", "DriftFault", "BitFlipFault",
           "StuckFault", "load_chip", "list_chips", "parse_chip", "describe_chip"]

CHIPS_DIR = Path(__file__).resolve().parent.parent / "chips"  # the presets (package data of hwfault)


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
    return validate(data, source)


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
