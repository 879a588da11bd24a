"""Names shared by the chip spec and the layers that act on them, with no dependencies (no torch).

The number formats (their arithmetic is :mod:`hwfault.formats`) and the component types of the
parameter selection (:mod:`hwfault.params`) are named here once, so that reading and checking a
chip spec (``hwfault chips ...``) imports no torch.
"""

from __future__ import annotations

__all__ = ["FLOAT_FORMATS", "INT_BITS", "FORMATS", "BLOCK_FORMATS", "COMPONENT_TYPES", "TAGS", "LAYER_TYPES"]

#: the float formats, by name (IEEE binary32, binary16, bfloat16)
FLOAT_FORMATS = ("fp32", "fp16", "bf16")
#: the widths N of the symmetric integer formats intN
INT_BITS = range(2, 17)
#: every number format name: fp32, fp16, bf16, int2 .. int16
FORMATS = FLOAT_FORMATS + tuple(f"int{n}" for n in INT_BITS)
#: formats whose elements share scales (their arithmetic is :mod:`hwfault.blockformats`): FP8 with a
#: tensor scale, OCP microscaling, NVFP4 (group-wise intN is an intN with ``scale = "per-group"``)
BLOCK_FORMATS = ("fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8",
                 "nvfp4")

#: the component types a parameter can have (``--types``, a chip's ``device.types``)
COMPONENT_TYPES = ("conv", "linear", "norm", "embedding", "attention", "recurrent", "elementwise")
#: what ``--types`` accepts: the component types and the tensor names ``bias`` / ``weight``
TAGS = COMPONENT_TYPES + ("bias", "weight")
#: the kinds of layer whose outputs activation faults strike (``types`` of an activation fault)
LAYER_TYPES = ("conv", "linear", "norm", "activation", "pool")
