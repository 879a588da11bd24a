"""The chip spec schema: :class:`ChipSpec` with its :class:`FormatSpec` and :class:`DeviceSpec`.

The ``[[faults]]`` entries are a discriminated union (on ``kind``) of the config schemas in the
fault registry (:mod:`hwfault.faults.registry`): each fault kind's schema is declared in
``hwfault/faults/<kind>.py``. Nothing here imports torch (the format and component-type names come
from :mod:`hwfault.vocab`), so that reading and checking a spec is fast.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_serializer, model_validator

from ..errors import did_you_mean
from ..faults import registry
from ..faults.config import Flag, StrictModel, Text, fail, globs, show
from ..vocab import BLOCK_FORMATS, FORMATS, TAGS
from .protection import Protection, check_entries
from .toml import chip_toml

__all__ = ["SCHEMA_VERSION", "FAULT_KINDS", "ChipSpec", "FormatSpec", "DeviceSpec", "ActivationsSpec", "Fault"]

SCHEMA_VERSION = 1

_FORMAT_ALIASES = {"float32": "fp32", "float": "fp32", "single": "fp32", "float16": "fp16", "half": "fp16",
                   "bfloat16": "bf16", "uint8": "int8", "int": "int8"}


class FormatSpec(StrictModel):
    """How the chip stores a weight: ``fp32`` / ``fp16`` / ``bf16``; ``intN`` (N in 2..16, symmetric,
    one scale per tensor, per output channel, or ``per-group`` of ``group_size`` weights along the
    reduction dimension); or a block format (``fp8_e4m3``, ``mxfp4``, ``nvfp4``, ...:
    :mod:`hwfault.blockformats`), whose scales the format itself defines."""

    kind: Text
    scale: Literal["per-tensor", "per-channel", "per-group"] = "per-tensor"
    group_size: Annotated[int, Field(strict=True, ge=1)] | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v in FORMATS or v in BLOCK_FORMATS:
            return v
        alias = v.lower() if v.lower() in FORMATS + BLOCK_FORMATS else _FORMAT_ALIASES.get(v.lower())
        if alias:
            fail(f"unknown number format '{v}' (did you mean '{alias}'?)")
        if re.fullmatch(r"u?int\d+", v.lower()):
            fail(f"expected an integer format int2 .. int16, got '{v}'")
        hint = did_you_mean(v, FORMATS + BLOCK_FORMATS) or \
            f" (choose from: fp32, fp16, bf16, int2 .. int16, {', '.join(BLOCK_FORMATS)})"
        fail(f"unknown number format '{v}'{hint}")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind in BLOCK_FORMATS and v != "per-tensor":
            fail(f"expected no scale setting for the block format '{kind}' (its scales are part of the "
                 f"format), got '{v}'")
        if v != "per-tensor" and kind is not None and kind not in BLOCK_FORMATS and not kind.startswith("int"):
            fail(f"expected 'per-tensor' for the float format '{kind}' (per-channel and per-group scales apply "
                 f"to int formats), got '{v}'")
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v, info: ValidationInfo):
        if v is not None and info.data.get("scale") != "per-group":
            fail(f"expected group_size only with scale = \"per-group\", got group_size = {v} with scale = "
                 f"\"{info.data.get('scale', 'per-tensor')}\"")
        return v

    @model_validator(mode="after")
    def _grouped(self):
        if self.scale == "per-group" and self.group_size is None:
            fail("expected group_size (weights per scale, e.g. 32 or 128) with scale = \"per-group\"")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # group_size only where it is set: the specs (and campaign identities) of other formats stay as they were
        out = handler(self)
        if out.get("group_size") is None:
            out.pop("group_size", None)
        return out

    @property
    def is_int(self) -> bool:
        return self.kind.startswith("int")


class DeviceSpec(StrictModel):
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
                fail(f"unknown component type '{t}'{did_you_mean(t, TAGS)}")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: list[str]) -> list[str]:
        return globs(v, "parameter-name glob such as 'features.*'")


class ActivationsSpec(StrictModel):
    """How the chip stores activations, for the bits that activation faults flip: ``format`` is fp32
    (the default), fp16, bf16, intN (one scale per input and layer output: max|a| over the largest
    code) or a block format (FP8 likewise; MX formats with their block scales along the output)."""

    format: Text = "fp32"

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v in FORMATS or v in BLOCK_FORMATS:
            return v
        hint = did_you_mean(v, FORMATS + BLOCK_FORMATS) or \
            f" (choose from: fp32, fp16, bf16, int2 .. int16, {', '.join(BLOCK_FORMATS)})"
        fail(f"unknown activation format '{v}'{hint}")


FAULT_KINDS: tuple[str, ...] = registry.names()

Fault = Annotated[Union[tuple(k.config for k in registry.kinds())], Field(discriminator="kind")]


class ChipSpec(StrictModel):
    """A chip: weight number format, device selection, faults (in order) and the coverage of the
    worst-case set (the probability that it contains a random realisation of the faults)."""

    schema_version: Annotated[int, Field(strict=True)] = SCHEMA_VERSION
    name: Text
    description: Text = ""
    references: list[Text] = []
    coverage: Annotated[float, Field(strict=True, gt=0, lt=1)] = 0.999
    format: FormatSpec
    device: DeviceSpec = DeviceSpec()
    activations: ActivationsSpec | None = None
    faults: list[Fault] = []
    protection: list[Protection] = []  # [[protection]]: hwfault.spec.protection

    @field_validator("protection")
    @classmethod
    def _protection(cls, v: list) -> list:
        return check_entries(v)

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            fail(f"expected schema_version {SCHEMA_VERSION}, got {v} (a spec for another version of hwfault)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip() or v != v.strip() or "\n" in v:
            fail(f"expected a non-empty one-line name without surrounding spaces, got {show(v)}")
        return v

    @field_validator("faults")
    @classmethod
    def _targets(cls, v: list, info: ValidationInfo) -> list:
        fmt = info.data.get("format")
        if fmt is None or fmt.kind in BLOCK_FORMATS or fmt.scale == "per-group":
            return v
        for i, f in enumerate(v):
            if getattr(f, "target", "elements") != "elements":
                fail(f"expected \"elements\" on the format '{fmt.kind}' (it stores no shared scales; block "
                     f"formats and per-group intN do), got \"{f.target}\"", i, "target")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)  # activations only where set: other chips' dicts (and campaign identities) stay
        if out.get("activations") is None:
            out.pop("activations", None)
        if not out.get("protection"):
            out.pop("protection", None)
        return out

    def to_dict(self) -> dict:
        """JSON-ready dictionary (``model_dump(mode="json")``)."""
        return self.model_dump(mode="json")

    def to_toml(self) -> str:
        """The spec as TOML; ``parse_chip(spec.to_toml()) == spec``."""
        return chip_toml(self.to_dict())
