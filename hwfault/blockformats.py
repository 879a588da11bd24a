"""The number formats of current accelerators, at the bit level: FP8, OCP microscaling (MX), NVFP4 and
group-wise intN, each as element codes plus the codes of the scales they share.

Formats (``FORMAT_KINDS``) and their rules, so that results compare across tools:

- ``fp8_e4m3`` (OCP E4M3FN: bias 7, largest normal 448, no infinities, S.1111.111 is NaN) and
  ``fp8_e5m2`` (bias 15, largest normal 57344, IEEE-like Inf/NaN): one fp32 scale per tensor,
  ``s = max|w| / largest normal``; elements ``w / s`` rounded to nearest even and saturated.
- MX (OCP Microscaling v1.0): ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``,
  ``mxfp4`` (E2M1) and ``mxint8``: blocks of 32 elements share a scale ``X = 2^(floor(log2 max|v|) -
  emax)`` stored as E8M0 (code ``e + 127``, 0xFF is NaN; an all-zero block gets code 0), ``emax`` the
  exponent of the element type's largest normal (E4M3 8, E5M2 15, E2M3 2, E3M2 4, E2M1 2, INT8 0);
  elements ``v / X`` rounded to nearest even and saturated at the largest normal. MXINT8's elements
  are 8-bit two's complement ``k`` meaning ``k / 64`` (saturated at +-127).
- ``nvfp4``: blocks of 16 E2M1 elements with an E4M3 scale each, and one fp32 scale per tensor:
  ``t = max|w| / (6 * 448)``, block scale ``E4M3(max|v| / 6 / t)``, elements ``E2M1(v / (scale * t))``.
- ``int`` with ``group``: N-bit two's complement codes with one fp16 scale per group of ``group``
  weights, ``scale = fp16(max|v| / (2^(N-1) - 1))``, codes ``v / scale`` rounded half to even and
  clamped to +-(2^(N-1) - 1).

Blocks and groups run along the reduction dimension: a weight of shape (out, ...) is viewed as (out, K),
K the product of its other dimensions, cut into consecutive blocks along K (the last one of a row may be
shorter; a 1-D tensor is one row). Codes are unsigned bit patterns in int64 tensors, bit 0 the least
significant, as in :mod:`hwfault.formats`. Encoding is computed in float64 from the float32 weights, so
every power-of-two scaling is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .errors import SpecError, did_you_mean
from .vocab import BLOCK_FORMATS, FORMATS


@dataclass(frozen=True)
class ElementType:
    """A small float type: sign, ``ebits`` exponent bits (``bias``), ``mbits`` mantissa bits; ``special``:
    ``"fn"`` (only S.1..1.1..1 is NaN), ``"ieee"`` (exponent all ones: Inf or NaN) or ``"none"``."""

    name: str
    ebits: int
    mbits: int
    bias: int
    special: str

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    def table(self) -> torch.Tensor:
        """The value (float64) of every code 0 .. 2^bits - 1."""
        return _tables(self)

    @property
    def max_normal(self) -> float:
        t = self.table()
        return float(t[torch.isfinite(t)].max())

    @property
    def emax(self) -> int:
        """The exponent of the largest normal."""
        return math.frexp(self.max_normal)[1] - 1

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """Codes of ``v`` rounded to nearest (ties to the even code) and saturated at the largest
        normal; NaN becomes the NaN code (types without one: 0)."""
        v = v.double()
        pos = self._positive()
        a = v.abs().clamp(max=float(pos[-1]))
        hi = torch.searchsorted(pos, a).clamp(max=len(pos) - 1)
        lo = (hi - 1).clamp(min=0)
        d_lo, d_hi = a - pos[lo], pos[hi] - a
        pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
        code = torch.where(pick_hi, hi, lo)
        code = torch.where(a == pos[hi], hi, code)
        code = code | (torch.signbit(v).long() << (self.bits - 1))
        nan = self._nan_code()
        return torch.where(torch.isnan(v), torch.full_like(code, nan), code)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table().to(codes.device)[codes.long()]

    def _positive(self) -> torch.Tensor:
        """Values of the non-negative finite codes, in code order (they increase with the code)."""
        t = self.table()[: 1 << (self.bits - 1)]
        return t[torch.isfinite(t)]

    def _nan_code(self) -> int:
        if self.special == "fn":
            return (1 << (self.bits - 1)) - 1
        if self.special == "ieee":
            return (1 << (self.bits - 1)) - 1  # exponent all ones, mantissa all ones
        return 0


_TABLES: dict = {}


def _tables(t: ElementType) -> torch.Tensor:
    if t.name not in _TABLES:
        codes = torch.arange(1 << t.bits, dtype=torch.int64)
        sign = torch.where(codes >> (t.bits - 1) == 1, -1.0, 1.0).double()
        e = (codes >> t.mbits) & ((1 << t.ebits) - 1)
        m = (codes & ((1 << t.mbits) - 1)).double()
        frac = m / (1 << t.mbits)
        val = torch.where(e == 0, frac * 2.0 ** (1 - t.bias), (1 + frac) * torch.pow(2.0, (e - t.bias).double()))
        top = e == (1 << t.ebits) - 1
        if t.special == "fn":
            val = torch.where(top & (m == (1 << t.mbits) - 1), math.nan, val)
        elif t.special == "ieee":
            val = torch.where(top, torch.where(m == 0, math.inf, math.nan), val)
        _TABLES[t.name] = sign * val
    return _TABLES[t.name]


E4M3 = ElementType("e4m3", 4, 3, 7, "fn")
E5M2 = ElementType("e5m2", 5, 2, 15, "ieee")
E2M3 = ElementType("e2m3", 2, 3, 1, "none")
E3M2 = ElementType("e3m2", 3, 2, 3, "none")
E2M1 = ElementType("e2m1", 2, 1, 1, "none")

#: kind -> (element type or "int8", block size, scale type)
_KINDS = {"fp8_e4m3": (E4M3, 0, "fp32"), "fp8_e5m2": (E5M2, 0, "fp32"),
          "mxfp8_e4m3": (E4M3, 32, "e8m0"), "mxfp8_e5m2": (E5M2, 32, "e8m0"), "mxfp6_e2m3": (E2M3, 32, "e8m0"),
          "mxfp6_e3m2": (E3M2, 32, "e8m0"), "mxfp4": (E2M1, 32, "e8m0"), "mxint8": ("int8", 32, "e8m0"),
          "nvfp4": (E2M1, 16, "e4m3")}
FORMAT_KINDS = (*BLOCK_FORMATS, "int")
assert set(_KINDS) == set(BLOCK_FORMATS)
SCALE_BITS = {"fp32": 32, "e8m0": 8, "e4m3": 8, "fp16": 16}
MXINT8_EMAX = 0  # elements k / 64 lie in (-2, 2)


@dataclass(frozen=True)
class BlockFormat:
    """A format whose elements share scales. ``kind`` one of :data:`FORMAT_KINDS`; for ``int``: ``bits``
    (2..16) and ``group`` (weights per scale)."""

    kind: str
    bits: int = 0
    group: int = 0

    def __post_init__(self):
        if self.kind not in FORMAT_KINDS:
            raise SpecError(f"unknown block format kind '{self.kind}'{did_you_mean(self.kind, FORMAT_KINDS)}")
        if self.kind == "int":
            if not 2 <= self.bits <= 16:
                raise SpecError(f"expected 2 to 16 bits for a group-wise int format, got {self.bits}")
            if self.group < 1:
                raise SpecError(f"expected group_size >= 1 for a group-wise int format, got {self.group}")
        else:
            elem, block, _ = _KINDS[self.kind]
            object.__setattr__(self, "bits", 8 if elem == "int8" else elem.bits)
            object.__setattr__(self, "group", block)

    @property
    def element(self):
        """The element type (an :class:`ElementType`, or ``"int"`` for integer codes)."""
        return "int" if self.kind in ("int", "mxint8") else _KINDS[self.kind][0]

    @property
    def scale_type(self) -> str:
        return "fp16" if self.kind == "int" else _KINDS[self.kind][2]

    @property
    def scale_bits(self) -> int:
        return SCALE_BITS[self.scale_type]

    @property
    def name(self) -> str:
        return f"int{self.bits}-g{self.group}" if self.kind == "int" else self.kind


@dataclass(frozen=True)
class Blocked:
    """A tensor stored in a :class:`BlockFormat`: element codes (rows, K padded to whole blocks), one
    scale code per block (rows, blocks; per tensor: (1, 1)), the fp32 tensor scale of NVFP4 (else 1),
    and the original shape. :meth:`decode` gives the stored values."""

    fmt: BlockFormat
    shape: tuple
    elements: torch.Tensor
    scales: torch.Tensor
    tensor_scale: float = 1.0

    @property
    def k(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else math.prod(self.shape)

    def decode(self) -> torch.Tensor:
        """The stored values (float64, the original shape)."""
        f = self.fmt
        elem = _element_values(f, self.elements)
        scale = _scale_values(f.scale_type, self.scales)
        if f.group:
            scale = scale.repeat_interleave(f.group, dim=1)[:, : elem.shape[1]]
        vals = elem * scale * self.tensor_scale
        return vals[:, : self.k].reshape(self.shape)

    def with_elements(self, elements: torch.Tensor) -> Blocked:
        return replace(self, elements=elements)

    def with_scales(self, scales: torch.Tensor) -> Blocked:
        return replace(self, scales=scales)


def encode(w: torch.Tensor, fmt: BlockFormat) -> Blocked:
    """``w`` stored in ``fmt`` (see the module docstring for each format's rules)."""
    shape = tuple(w.shape)
    rows = w.detach().double().reshape(shape[0], -1) if w.ndim > 1 else w.detach().double().reshape(1, -1)
    if fmt.group == 0:  # FP8 with one fp32 scale per tensor
        elem = fmt.element
        amax = float(rows.abs().max()) if rows.numel() else 0.0
        s = _fp32(amax / elem.max_normal) if amax > 0 else 1.0
        scale_code = torch.tensor([[_fp32_bits(s)]], dtype=torch.int64)
        return Blocked(fmt, shape, elem.encode(rows / s), scale_code)
    g = fmt.group
    k = rows.shape[1]
    nb = -(-k // g)
    padded = torch.zeros(rows.shape[0], nb * g, dtype=torch.float64)
    padded[:, :k] = rows
    blocks = padded.view(rows.shape[0], nb, g)
    amax = blocks.abs().amax(-1)
    if fmt.kind == "int":
        qmax = (1 << (fmt.bits - 1)) - 1
        scale = (amax / qmax).to(torch.float16)
        sv = scale.double()
        q = torch.round(blocks / torch.where(sv > 0, sv, 1.0)[..., None]).clamp(-qmax, qmax)
        codes = q.long() & ((1 << fmt.bits) - 1)
        return Blocked(fmt, shape, codes.view(rows.shape[0], -1), scale.view(torch.int16).long() & 0xFFFF)
    if fmt.kind == "nvfp4":
        t_amax = float(rows.abs().max()) if rows.numel() else 0.0
        ts = _fp32(t_amax / (6 * 448)) if t_amax > 0 else 1.0
        scode = E4M3.encode(amax / 6 / ts)
        sv = E4M3.decode(scode)
        elems = E2M1.encode(blocks / torch.where(sv > 0, sv * ts, 1.0)[..., None])
        return Blocked(fmt, shape, elems.view(rows.shape[0], -1), scode, ts)
    emax = MXINT8_EMAX if fmt.kind == "mxint8" else fmt.element.emax
    e = torch.frexp(amax)[1].long() - 1 - emax  # floor(log2 amax) - emax, exactly
    code = torch.where(amax > 0, (e + 127).clamp(0, 254), torch.zeros_like(e))
    x = torch.pow(2.0, (code - 127).double())[..., None]
    if fmt.kind == "mxint8":
        q = torch.round(blocks / x * 64).clamp(-127, 127).long() & 0xFF
        return Blocked(fmt, shape, q.view(rows.shape[0], -1), code)
    return Blocked(fmt, shape, fmt.element.encode(blocks / x).view(rows.shape[0], -1), code)


def _element_values(fmt: BlockFormat, codes: torch.Tensor) -> torch.Tensor:
    if fmt.kind == "mxint8":
        return _signed(codes, 8).double() / 64
    if fmt.kind == "int":
        return _signed(codes, fmt.bits).double()
    return fmt.element.decode(codes)


def _scale_values(kind: str, codes: torch.Tensor) -> torch.Tensor:
    if kind == "e8m0":
        return torch.where(codes == 0xFF, math.nan, torch.pow(2.0, (codes - 127).double()))
    if kind == "e4m3":
        return E4M3.decode(codes)
    if kind == "fp16":
        return (codes & 0xFFFF).to(torch.int16).view(torch.float16).double() if codes.numel() else codes.double()
    return (codes & 0xFFFFFFFF).to(torch.int64).to(torch.int32).view(torch.float32).double()


def _signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    c = codes.long() & ((1 << bits) - 1)
    return torch.where(c >= 1 << (bits - 1), c - (1 << bits), c)


def _fp32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def _fp32_bits(x: float) -> int:
    return int(torch.tensor([x], dtype=torch.float32).view(torch.int32)[0]) & 0xFFFFFFFF


def parse(text: str, group: int | None = None) -> BlockFormat:
    """A block format from its name (``"mxfp4"``, ``"nvfp4"``, ``"fp8_e4m3"``, ...) or ``"intN"`` with
    ``group``."""
    t = str(text).strip().lower()
    if t.startswith("int") and t[3:].isdigit():
        if group is None:
            raise SpecError(f"{t} with scale = \"per-group\" needs group_size")
        return BlockFormat("int", int(t[3:]), int(group))
    return BlockFormat(t)


@dataclass(frozen=True)
class StoredBlockFormat:
    """A :class:`BlockFormat` as a chip's number format (the interface of
    :class:`hwfault.formats.NumberFormat`): each element's code is read with a per-element scale, the
    value of its block's shared scale times the tensor scale (float32). The element codes are
    ``bits`` wide; the shared scales are fixed by the fault-free weights."""

    block: BlockFormat
    per_channel: bool = False
    is_int: bool = False  # (intN's per-tensor/per-channel rules do not apply)
    scaled: bool = True   # encode and decode need the per-element scale

    @property
    def kind(self) -> str:
        return self.block.kind

    @property
    def bits(self) -> int:
        return self.block.bits

    @property
    def name(self) -> str:
        return self.block.name

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The per-element scale of ``w`` stored in this format (float32, w's shape)."""
        b = encode(w, self.block)
        f = self.block
        s = _scale_values(f.scale_type, b.scales)
        if f.kind == "mxint8":
            s = s / 64
        if f.group:
            s = s.repeat_interleave(f.group, dim=1)[:, : b.k]
        s = s * b.tensor_scale
        rows = b.elements.shape[0]
        return torch.broadcast_to(s, (rows, b.k)).reshape(w.shape).float() if w.ndim else s.reshape(()).float()

    def encode(self, w: torch.Tensor, scale: torch.Tensor | None = None, *, stored: bool = True) -> torch.Tensor:
        """Element codes of ``w`` read with ``scale`` (default: the scale of ``w`` itself). Integer
        codes of stored values may be -2^(N-1) (a flip can store it, as in intN); rounding a weight
        (``stored=False``) saturates at +-(2^(N-1) - 1)."""
        s = (self.scale(w) if scale is None else torch.as_tensor(scale)).double()
        v = w.detach().double() / torch.where(s > 0, s, 1.0)
        if self.block.element == "int":
            qmax = (1 << (self.bits - 1)) - 1
            return torch.round(v).clamp(-qmax - int(stored), qmax).long() & ((1 << self.bits) - 1)
        return self.block.element.encode(v)

    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if scale is None:
            raise ValueError(f"expected the scale to decode {self.name} codes, got None")
        if self.block.element == "int":
            e = _signed(codes, self.bits).double()
        else:
            e = self.block.element.decode(codes)
        return (e * torch.as_tensor(scale).double()).float()

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s = self.scale(w)
        return self.decode(self.encode(w, s, stored=False), s)

    def step(self, w: torch.Tensor) -> torch.Tensor:
        """Per element, one quantisation step (float32, units of w): the gap from the stored value to the
        next larger magnitude (at the largest finite code: to the one below), and at least twice the
        actual rounding error (saturated values)."""
        s = self.scale(w)
        codes = self.encode(w, s, stored=False)
        q = self.decode(codes, s).double()
        sign = 1 << (self.bits - 1)
        if self.block.element == "int":
            up = q.abs() + s.double()
            gap = up - q.abs()
        else:  # the gap to the next larger magnitude; at the largest finite code, the gap below it
            t = self.block.element
            mag = codes & (sign - 1)
            above = t.decode((mag + 1).clamp(max=sign - 1)).abs()
            below = t.decode((mag - 1).clamp(min=0)).abs()
            top = (mag + 1 >= sign) | ~torch.isfinite(above)
            gap = torch.where(top, t.decode(mag).abs() - below, above - t.decode(mag).abs()) * s.double()
        return torch.maximum(gap, 2 * (w.detach().double() - q).abs()).float()


@dataclass(frozen=True)
class ScaleSites:
    """The shared scales of a chip's tensors, flat: one site per block (per tensor for FP8), its stored
    code (``bits`` wide), and the flat element range ``[start, stop)`` it scales (the elements of a
    block are consecutive in the flat layout: rows are contiguous and blocks run along them)."""

    codes: torch.Tensor    # (S,) int64
    start: torch.Tensor    # (S,) int64
    stop: torch.Tensor     # (S,) int64
    factor: torch.Tensor   # (S,) float64: what multiplies the decoded scale (tensor scale, 1/64 for MXINT8)
    kind: str              # the scale type: "e8m0", "e4m3", "fp16" or "fp32"
    bits: int

    @property
    def count(self) -> int:
        return self.codes.numel()

    def element_scale(self, site: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The per-element scale (float32, as a chip reads it) of sites ``site`` holding ``codes``."""
        return (_scale_values(self.kind, codes) * self.factor[site]).float()

    def element_sites(self, k: int) -> torch.Tensor:
        """(k,) the site of every element (-1 for none)."""
        out = torch.full((k,), -1, dtype=torch.int64)
        el, owner = self.elements(torch.arange(self.count))
        out[el] = owner
        return out

    def factors(self) -> torch.Tensor:
        """(sites, bits): the change factor (new scale / old scale - 1) when one bit of a site's scale
        flips; NaN where the new one is not a number. A zero scale (an all-zero NVFP4 block) scales
        zeros: a finite new scale changes nothing (factor 0)."""
        flipped = self.codes[:, None] ^ (1 << torch.arange(self.bits, dtype=torch.int64))
        old = _scale_values(self.kind, self.codes)[:, None]
        new = _scale_values(self.kind, flipped)
        nan = torch.full_like(new, math.nan)
        return torch.where(~torch.isfinite(new), nan, torch.where(old != 0, new / old - 1, torch.zeros_like(new)))

    def elements(self, site: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat element indices, the site of each) of the elements the given sites scale."""
        n = self.stop[site] - self.start[site]
        owner = torch.repeat_interleave(site, n)
        first = torch.repeat_interleave(self.start[site], n)
        offs = torch.arange(int(n.sum())) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        return first + offs, owner


def scale_sites(fmt: BlockFormat, tensors) -> ScaleSites:
    """The :class:`ScaleSites` of ``tensors`` (the chip's weights, in its flat order) stored in ``fmt``."""
    codes, start, stop, factor = [], [], [], []
    base = 0
    for w in tensors:
        b = encode(w, fmt)
        rows, k = b.elements.shape[0], b.k
        if fmt.group == 0:
            starts, stops = torch.tensor([base]), torch.tensor([base + w.numel()])
        else:
            j = torch.arange(b.scales.shape[1])
            r = torch.arange(rows)[:, None]
            starts = (base + r * k + j * fmt.group).reshape(-1)
            stops = (base + r * k + torch.clamp((j + 1) * fmt.group, max=k)).reshape(-1)
        codes.append(b.scales.reshape(-1))
        start.append(starts)
        stop.append(stops)
        factor.append(torch.full((starts.numel(),), b.tensor_scale / (64 if fmt.kind == "mxint8" else 1),
                                 dtype=torch.float64))
        base += w.numel()
    return ScaleSites(torch.cat(codes), torch.cat(start), torch.cat(stop), torch.cat(factor), fmt.scale_type,
                      fmt.scale_bits)


def number_format(text: str, *, per_channel: bool = False, group: int | None = None):
    """Any stored format by name: a block format (or intN with ``group``) as a
    :class:`StoredBlockFormat`, else a :class:`hwfault.formats.NumberFormat` (fp32, fp16, bf16, intN)."""
    t = str(text).strip().lower()
    if t in BLOCK_FORMATS or group is not None:
        return StoredBlockFormat(parse(t, group))
    from .formats import NumberFormat

    if t not in FORMATS and not t.startswith("int"):
        raise SpecError(f"unknown number format '{text}'{did_you_mean(t, FORMATS + BLOCK_FORMATS)}")

    return NumberFormat.parse(text, per_channel=per_channel)
