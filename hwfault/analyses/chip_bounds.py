"""The certified floor on a chip: the bounds of :mod:`hwfault.certification` over what a chip spec
can do to a model (``hwfault certify --chip``).

Two sets are certified: the chip's covering set (all its faults at the coverage; discrete bit-flip
and stuck-cell sets have no certificate and are skipped with a note), and for an intN chip or a
block-format chip (FP8, MX, NVFP4, per-group intN) the rounding of the weights to its format
(quantisation safety: half a step per element, each read with its block's scale).
"""

from __future__ import annotations

from collections.abc import Callable

from ..certification import certify_set, quantisation_safety
from ..errors import HwfaultError
from ..faults import Chip
from ..inputs import resolve_data, resolve_model
from ..spec import load_chip


def certify_chip(model, data, chip, *, coverage: float | None = None, method: str = "auto",
                 time_budget: float = 30.0, on_note: Callable[[str], None] | None = None) -> dict:
    """``{"chip", "coverage", "norm": None, "relative": None, "points": [...]}`` with one certified point
    per set (each with a ``label``), the JSON of ``hwfault certify --chip`` without the model and data.
    A set that cannot be certified is skipped and ``on_note`` says why; a chip with nothing to certify
    is a one-line error."""
    spec = load_chip(chip)
    module, _ = resolve_model(model)
    test, _ = resolve_data(data)
    dev = Chip.build(spec, module)
    cov = spec.coverage if coverage is None else coverage
    points = []
    try:
        pt = certify_set(module, test, dev.constraint(cov), selection=dev.selection, method=method,
                         time_budget=time_budget, label="certify covering set")
        points.append({**pt.to_dict(), "label": f"covering set ({cov})"})
    except HwfaultError as e:
        if on_note:
            on_note(str(e))
    fmt = dev.view.fmt
    if fmt.is_int or getattr(fmt, "block", None) is not None:  # intN, and the block formats, block-wise
        q = quantisation_safety(module, test, per_channel=spec.format.scale == "per-channel", format=fmt,
                                params=list(dev.selection.names), method=method, time_budget=time_budget)
        points.append({**q.to_dict(), "label": f"{dev.view.fmt.name} rounding"})
    if not points:
        raise HwfaultError(f"chip '{spec.name}': nothing to certify (its faults are discrete and it stores floats)")
    return {"chip": spec.name, "coverage": cov, "norm": None, "relative": None, "points": points}
