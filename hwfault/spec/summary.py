"""The human summary of a chip spec (``hwfault chips show``).

Each fault is one line ``kind: field value, ... (what it means)  [source]``; the plain-words part is
the one-line summary its kind registered (:mod:`hwfault.faults.registry`), the units come from the
kind's config (``units``).
"""

from __future__ import annotations

from ..faults import registry
from ..faults.config import num, show
from .schema import ChipSpec

__all__ = ["describe_chip", "fault_line"]


def fault_line(f) -> str:
    """``kind: field value, ... (what it means)  [source]``."""
    fields = {k: v for k, v in f.model_dump().items() if k not in ("kind", "source") and v is not None}
    units = {k: f" {u}" for k, u in type(f).units.items()}
    nums = ", ".join(f"{k} {num(v) if isinstance(v, float) else show(v) if not isinstance(v, str) else v}"
                     f"{units.get(k, '')}" for k, v in fields.items())
    return f"{f.kind}: {nums} ({registry.get(f.kind).summary(f)})" + (f"  [{f.source}]" if f.source else "")


def describe_chip(spec: ChipSpec) -> str:
    """A short human-readable summary (for ``hwfault chips show``)."""
    f = spec.format
    fmt = f.kind + (f", per-group scale (groups of {f.group_size})" if f.scale == "per-group"
                    else f", {f.scale} scale" if f.is_int else "")
    dev = spec.device
    where = (", ".join(dev.types) + " layers") if dev.types else "all layer types"
    if dev.params:
        where += f", params matching {', '.join(dev.params)}"
    where += "; weights only" if dev.weights_only else "; all parameters (weights, biases, norms)"
    lines = [f"{spec.name}" + (f": {spec.description}" if spec.description else ""),
             f"  format:     {fmt}",
             f"  device:     {where}",
             f"  coverage:   {num(spec.coverage)} (probability that the worst-case set contains a realisation)"]
    if spec.activations is not None:
        lines.insert(2, f"  activations: stored as {spec.activations.format} (the bits that activation faults flip)")
    if spec.faults:
        lines.append("  faults (in order, after storage in the format):")
        lines += [f"    {i}. {fault_line(f)}" for i, f in enumerate(spec.faults, 1)]
    else:
        lines.append("  faults:     none (storage in the format only)")
    if spec.protection:
        from .protection import protection_line

        lines.append("  protection:")
        lines += [f"    - {protection_line(p)}" + (f"  [{p.source}]" if p.source else "") for p in spec.protection]
    if spec.references:
        lines.append("  references:")
        lines += [f"    - {r}" for r in spec.references]
    return "\n".join(lines)
