"""Number formats of weights stored on an accelerator, and bit-level fault operations.

Conventions:

- Bit 0 is the least significant bit, everywhere (bit ``bits - 1`` is the sign bit of every format).
- Stored codes are int64 tensors holding the unsigned bit pattern, in ``[0, 2**bits)``.
- ``fp32`` / ``fp16`` / ``bf16`` store the IEEE 754 binary32 / binary16 or the bfloat16 pattern;
  values are rounded to nearest (ties to even), and flips may produce Inf or NaN.
- ``intN`` (N in 2..16) stores the two's complement code q of the value q * scale with a
  symmetric scale max|w| / (2**(N-1) - 1), one per tensor or one per output channel (dim 0).
  Quantised codes lie in [-qmax, qmax] with qmax = 2**(N-1) - 1; a flip may store -2**(N-1),
  which encode and decode also accept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SpecError, did_you_mean
from .vocab import FORMATS, INT_BITS as _INT_BITS

#: name -> (bits, storage dtype, same-width integer dtype for the bit view)
_FLOATS = {"fp32": (32, torch.float32, torch.int32), "fp16": (16, torch.float16, torch.int16),
           "bf16": (16, torch.bfloat16, torch.int16)}


def list_formats() -> list[str]:
    """Format names: fp32, fp16, bf16, int2 ... int16 (named in :mod:`hwfault.vocab`)."""
    return list(FORMATS)


@dataclass(frozen=True)
class NumberFormat:
    """How the chip stores one weight; ``per_channel`` (int only, ignored and normalised to False
    for floats) gives each output channel (dim 0) its own scale. Tensors of fewer than 2 dims
    always get one scale per tensor."""

    kind: str  # "fp32" | "fp16" | "bf16" | "int"
    bits: int  # 32 for fp32, 16 for fp16/bf16, N in 2..16 for int
    per_channel: bool = False

    def __post_init__(self):
        if self.kind in _FLOATS:
            if self.bits != _FLOATS[self.kind][0]:
                raise SpecError(f"expected {_FLOATS[self.kind][0]} bits for {self.kind}, got {self.bits}")
            object.__setattr__(self, "per_channel", False)
        elif self.kind == "int":
            if self.bits not in _INT_BITS:
                raise SpecError(f"expected 2 to 16 bits for an int format, got {self.bits}")
        else:
            raise SpecError(f"expected a format kind fp32, fp16, bf16 or int, got '{self.kind}'")

    @classmethod
    def parse(cls, text: str, per_channel: bool = False) -> NumberFormat:
        """``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"intN"`` (case-insensitive)."""
        t = str(text).strip().lower()
        if t in _FLOATS:
            return cls(t, _FLOATS[t][0])
        if t.startswith("int") and t[3:].isdigit() and int(t[3:]) in _INT_BITS:
            return cls("int", int(t[3:]), bool(per_channel))
        want = "intN with N in 2..16" if t.startswith("int") and t[3:].isdigit() else "fp32, fp16, bf16 or intN"
        raise SpecError(f"expected a number format {want}, got '{text}'{did_you_mean(t, list_formats())}")

    @property
    def name(self) -> str:
        return f"int{self.bits}" if self.is_int else self.kind

    @property
    def is_int(self) -> bool:
        return self.kind == "int"

    @property
    def scaled(self) -> bool:
        """Whether encode and decode need a per-element scale (int formats; see also
        :class:`hwfault.blockformats.StoredBlockFormat`)."""
        return self.is_int

    @property
    def qmax(self) -> int:
        """Largest quantised code of an int format, 2**(N-1) - 1."""
        return 2 ** (self.bits - 1) - 1

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """int: max|w| / qmax (float32), 0-dim per tensor or shape (C, 1, ...) per channel; 1 where
        max|w| = 0. Floats: ``torch.ones(())``."""
        if not self.is_int:
            return torch.ones(())
        a = w.detach().abs().float()
        if self.per_channel and a.ndim > 1:
            m = a.reshape(a.shape[0], -1).amax(dim=1) if a.numel() else torch.zeros(a.shape[0])
            m = m.reshape((-1,) + (1,) * (a.ndim - 1))
        else:
            m = a.max() if a.numel() else torch.zeros(())
        s = m / self.qmax
        return torch.where(s > 0, s, torch.ones_like(s))

    def step(self, w: torch.Tensor) -> torch.Tensor:
        """One quantisation step at each element (float32, w's shape, units of w): the scale for int,
        the spacing from the rounded |value| to the next larger magnitude for fp16/bf16 (as
        ``np.spacing``; Inf at the largest finite value), 0 for fp32."""
        w = w.detach().float()
        if self.is_int:
            return torch.broadcast_to(self.scale(w), w.shape).clone()
        if self.kind == "fp32":
            return torch.zeros_like(w)
        _, dt, it = _FLOATS[self.kind]
        q = w.abs().to(dt)
        return (q.view(it) + 1).view(dt).float() - q.float()

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Round to nearest in this format; a new float32 tensor of w's shape (a copy for fp32)."""
        w = w.detach().float()
        if self.is_int:
            s = self.scale(w)
            return self._codes(w, s, -self.qmax).float() * s
        return w.to(_FLOATS[self.kind][1]).float().clone()

    def encode(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Stored bit patterns of w (int64 in [0, 2**bits), w's shape). int formats use ``scale``
        (broadcastable to w; default ``self.scale(w)``) and clamp codes to [-2**(N-1), qmax]."""
        w = w.detach().float()
        if self.is_int:
            s = self.scale(w) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
            return self._codes(w, s, -self.qmax - 1) & ((1 << self.bits) - 1)
        _, dt, it = _FLOATS[self.kind]
        return w.to(dt).view(it).to(torch.int64) & ((1 << self.bits) - 1)

    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """float32 values of stored bit patterns (only the low ``bits`` bits are read); int formats
        need the ``scale`` they were encoded with."""
        c = codes.to(torch.int64) & ((1 << self.bits) - 1)
        signed = torch.where(c >= (1 << (self.bits - 1)), c - (1 << self.bits), c)  # sign-extend
        if self.is_int:
            if scale is None:
                raise ValueError(f"expected the scale to decode {self.name} codes, got None")
            return signed.float() * torch.as_tensor(scale, dtype=torch.float32)
        _, dt, it = _FLOATS[self.kind]
        return signed.to(it).view(dt).float()

    def _codes(self, w: torch.Tensor, s: torch.Tensor, lo: int) -> torch.Tensor:
        return torch.clamp(torch.round(w / s), lo, self.qmax).to(torch.int64)


def _masks(index: torch.Tensor, bit: torch.Tensor, odd: bool = False):
    """Distinct flat indices and the OR of the bit masks of their distinct (index, bit) pairs; with
    ``odd`` only pairs given an odd number of times count."""
    index, bit = torch.broadcast_tensors(torch.as_tensor(index, dtype=torch.int64).reshape(-1),
                                         torch.as_tensor(bit, dtype=torch.int64).reshape(-1))
    if bit.numel() and (bit.min() < 0 or bit.max() > 62):
        raise ValueError(f"expected bit positions in 0..62, got {int(bit.min())}..{int(bit.max())}")
    keys, counts = torch.unique(index * 64 + bit, return_counts=True)
    if odd:
        keys = keys[counts % 2 == 1]
    idx, inv = torch.unique(keys // 64, return_inverse=True)
    mask = torch.zeros(idx.numel(), dtype=torch.int64).index_add_(0, inv, 1 << (keys % 64))  # distinct bits: sum = OR
    return idx, mask


def _flat_copy(codes: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    flat = codes.reshape(-1).clone()
    if idx.numel() and (idx[0] < 0 or idx[-1] >= flat.numel()):  # idx is sorted
        raise IndexError(f"expected flat indices in 0..{flat.numel() - 1}, got {int(idx[0])}..{int(idx[-1])}")
    return flat


def flip_bits(codes: torch.Tensor, index: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
    """A copy of ``codes`` with bit ``bit[i]`` of flat element ``index[i]`` XOR-ed, for each i
    (index and bit broadcast; bit 0 = LSB). A pair given twice flips twice, i.e. cancels."""
    idx, mask = _masks(index, bit, odd=True)
    flat = _flat_copy(codes, idx)
    flat[idx] ^= mask
    return flat.view(codes.shape)


def stick_bits(codes: torch.Tensor, index: torch.Tensor, bit: torch.Tensor,
               value: int | torch.Tensor) -> torch.Tensor:
    """A copy of ``codes`` with bit ``bit[i]`` of flat element ``index[i]`` forced to ``value``
    (0: stuck-at-0, 1: stuck-at-1; a scalar or one per pair). A bit given both values ends at 1."""
    index, bit = torch.broadcast_tensors(torch.as_tensor(index, dtype=torch.int64).reshape(-1),
                                         torch.as_tensor(bit, dtype=torch.int64).reshape(-1))
    v = torch.as_tensor(value, dtype=torch.int64).reshape(-1).expand_as(bit)
    if v.numel() and not bool(((v == 0) | (v == 1)).all()):
        raise ValueError(f"expected stuck-at values 0 or 1, got {sorted(set(v.unique().tolist()) - {0, 1})}")
    idx0, mask0 = _masks(index[v == 0], bit[v == 0])
    idx1, mask1 = _masks(index[v == 1], bit[v == 1])
    flat = _flat_copy(codes, torch.cat([idx0, idx1]).sort().values)
    flat[idx0] &= ~mask0
    flat[idx1] |= mask1
    return flat.view(codes.shape)


def bit_deltas(fmt: NumberFormat, w_q: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """float32 of shape (*w_q.shape, bits): the value decoded after flipping bit b (last dim, bit 0 =
    LSB) of each element, minus its stored value (w_q itself when w_q is already quantised). Flips
    of float exponent bits may give Inf or NaN, kept as they are. int formats use ``scale``
    (default ``fmt.scale(w_q)``, the scale of the unquantised tensor up to round-off)."""
    if fmt.scaled:
        scale = fmt.scale(w_q) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
    codes = fmt.encode(w_q, scale)
    flipped = codes.unsqueeze(-1) ^ (1 << torch.arange(fmt.bits, dtype=torch.int64))
    s = scale.unsqueeze(-1) if fmt.scaled and scale.ndim else scale
    return fmt.decode(flipped, s) - fmt.decode(codes, scale).unsqueeze(-1)
