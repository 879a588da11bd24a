"""The analog periphery around an in-memory matrix-vector product (IBM aihwkit's IO-managed forward).

``periphery``: the outputs of the selected Linear and Conv layers (the analog tiles) are computed as
an analog tile computes them: each input vector scaled by its abs-max (noise management), quantised
by the DAC (``inp_res``) and clipped to [-1, 1]; the product with the weights on the tile gets
Gaussian output noise (``out_noise``), optionally a first-order IR drop (``ir_drop``), is quantised by
the ADC (``out_res`` of the range 2 ``out_bound``) and saturates at +-``out_bound``; with iterative bound
management an input whose output saturates is run again at half the scale, up to aihwkit's limits.
The bias is digital. Redrawn at every forward call. The field names and defaults are aihwkit's
(``IOParameters`` and ``MappingParameter``); the equations are in :mod:`hwfault.faults.models.periphery`.

Here: the schema and summary (no torch).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from .activation import _Layers
from .config import Flag, NonNeg, Pos, Text, fail, num
from .registry import lazy_attribute, register

Size = Annotated[int, Field(strict=True, ge=0)]


class PeripheryFault(_Layers):
    """DAC / ADC quantisation, output noise, output saturation and bound management of analog tiles
    (aihwkit's forward defaults: inp_res 1/126, out_res 1/510, out_noise 0.06, out_bound 12,
    noise management abs_max, iterative bound management). A resolution is 1/levels (aihwkit also
    reads a value > 1 as the number of levels); 0 turns the converter off (ideal)."""

    kind: Literal["periphery"]
    types: list[Text] = ["linear", "conv"]
    inp_res: NonNeg = 1 / 126
    out_bound: NonNeg = 12.0
    out_res: NonNeg = Field(1 / 510, validate_default=True)  # checked against out_bound also when left out
    out_noise: NonNeg = 0.06
    noise_management: Literal["abs_max", "none"] = "abs_max"
    bound_management: Literal["iterative", "none"] = Field("iterative", validate_default=True)
    max_bm_factor: Annotated[int, Field(strict=True, ge=1)] = 1000
    max_bm_res: Pos = 0.25
    ir_drop: NonNeg = 0.0
    ir_drop_g_ratio: Pos = 1.0 / 0.35 / 5e-6
    weight_scaling_omega: NonNeg = 0.0
    weight_scaling_columnwise: Flag = False
    max_input_size: Size = 512
    max_output_size: Size = 512

    @field_validator("types")
    @classmethod
    def _analog(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            if t not in ("linear", "conv"):
                fail(f"expected an analog tile's layer type (linear or conv), got '{t}'", index=i)
        return v

    @field_validator("out_res")
    @classmethod
    def _adc_range(cls, v: float, info: ValidationInfo) -> float:
        if v > 0 and info.data.get("out_bound") == 0:
            fail(f"expected 0 (no ADC) with out_bound = 0 (the ADC's range is 2 out_bound), got {num(v)}")
        return v

    @field_validator("bound_management")
    @classmethod
    def _bound(cls, v: str, info: ValidationInfo) -> str:
        if v == "iterative" and info.data.get("out_bound") == 0:
            fail('expected "none" with out_bound = 0 (nothing saturates), got "iterative"')
        return v

    @field_validator("weight_scaling_columnwise")
    @classmethod
    def _columns(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("weight_scaling_omega") == 0:
            fail("expected false with weight_scaling_omega = 0 (no weight mapping), got true")
        return v


def _res(r: float) -> str:
    if r == 0:
        return "off"
    levels = 1 / r if r <= 1 else r
    return f"1/{levels:.4g}"


def _summary(f) -> str:
    out = (f"analog tiles of the {', '.join(f.types)} layers" + (f" matching {', '.join(f.params)}" if f.params else "")
           + f": DAC {_res(f.inp_res)}, ADC {_res(f.out_res)}, output noise {num(f.out_noise)}, bound "
           + (num(f.out_bound) if f.out_bound else "none") + f", bound management {f.bound_management}")
    return out + (f", IR drop {num(f.ir_drop)}" if f.ir_drop else "") + "; redrawn every inference"


register(kind="periphery", config=PeripheryFault, model=".models.periphery:Periphery", order=10,
         args=lambda f: {k: (tuple(v) if isinstance(v, list) else v)
                         for k, v in f.model_dump(exclude={"kind", "source"}).items()},
         summary=_summary)


def __getattr__(name: str):
    """The fault model (torch) is imported on first use."""
    return lazy_attribute(__name__, ".models.periphery", name)
