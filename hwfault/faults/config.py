"""The building blocks of a ``[[faults]]`` entry's schema (and of the rest of the chip spec).

Scalars are strict: TOML has real types, so "0.5" or true where a number belongs is an error, not a
silent conversion. Integers are accepted where a float belongs. A validator that rejects a value
calls :func:`fail`; :mod:`hwfault.spec.messages` turns every pydantic error into one line
``<source>: <field path>: <message>``.

Every fault kind's config subclasses :class:`FaultConfig`: a frozen, strict pydantic model with a
``kind: Literal["<kind>"]`` discriminator, an optional ``source`` (the citation of the numbers) and
its own fields; ``units`` names the unit of a field where it has one (shown by ``hwfault chips show``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["StrictModel", "FaultConfig", "NonNeg", "Pos", "Prob", "Text", "Flag", "fail", "show", "num",
           "layer_types", "globs"]

NonNeg = Annotated[float, Field(strict=True, ge=0)]
Pos = Annotated[float, Field(strict=True, gt=0)]
Prob = Annotated[float, Field(strict=True, ge=0, le=1)]
Text = Annotated[str, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]


class StrictModel(BaseModel):
    """Unknown keys are errors, values are frozen, nan and inf are not numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FaultConfig(StrictModel):
    """One ``[[faults]]`` entry. Subclasses add ``kind: Literal["<kind>"]`` and their fields."""

    units: ClassVar[dict[str, str]] = {}  # field -> unit, e.g. {"t": "s"}

    source: Text = ""


def fail(msg: str, index: int | None = None, field: str | None = None):
    """Reject a value with ``msg``; ``index`` names the list item (``device.params[1]``), ``field`` a
    field of it (``faults[0].target``)."""
    # pydantic keeps only the message of a ValueError; an item index goes in a prefix that
    # hwfault.spec.messages strips again
    where = f"[{index}]" + (f".{field}" if field else "")
    raise ValueError(f"{where}\x00{msg}" if index is not None else msg)


def layer_types(v: list[str]) -> list[str]:
    """A ``types`` list of layer kinds (the layers whose outputs an activation fault or a Ranger
    bound acts on): at least one, each of :data:`hwfault.vocab.LAYER_TYPES`."""
    from ..errors import did_you_mean
    from ..vocab import LAYER_TYPES

    if not v:
        fail(f"expected at least one layer type (of {', '.join(LAYER_TYPES)}), got []")
    for i, t in enumerate(v):
        if t not in LAYER_TYPES:
            fail(f"unknown layer type '{t}'"
                 f"{did_you_mean(t, LAYER_TYPES) or ' (choose from: ' + ', '.join(LAYER_TYPES) + ')'}", index=i)
    return v


def globs(v: list[str], example: str) -> list[str]:
    """A list of name globs, none of them empty (``example``: what one looks like, for the message)."""
    for i, g in enumerate(v):
        if not g.strip():
            fail(f"expected a {example}, got ''", index=i)
    return v


class LayerSelection(StrictModel):
    """The layers an entry acts on (activation faults, Ranger, checksums): component types and
    module-name globs, both checked by :func:`layer_types` and :func:`globs`."""

    types: list[Text] = ["conv", "linear"]
    params: list[Text] = []

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        return layer_types(v)

    @field_validator("params")
    @classmethod
    def _params(cls, v: list[str]) -> list[str]:
        return globs(v, "module-name glob such as 'layer1.*'")


def show(v: Any) -> str:
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
        s = "[" + ", ".join(show(x) for x in v) + "]"
        return s if len(s) <= 60 else s[:57] + "...]"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def num(x: float) -> str:
    """A number for a human line: ``f"{x:g}"``."""
    return f"{x:g}"
