"""Selective ECC and TMR on stored weight bits: which bits, and what the redundancy leaves of a flip.

**Choosing the bits.** A budget of n of the M = k x bits stored weight bits, by strategy:

- ``ranked``: the worst-case ranking, the first-order loss change of each single flip,
  ``|g_i * delta_ib|`` (``g`` the loss gradient at the stored weights, ``delta_ib`` the change of weight
  i when its bit b flips: :meth:`DeviceView.bit_deltas`), the gain the bit search and the covering
  set's linear oracle rank by; a flip to a non-finite value (an exponent flip to Inf/NaN) ranks first.
  Given the gradient at a worst-case point as well (``hwfault protect`` takes the unprotected chip's
  lowest point), ``ADVERSARY_SHARE`` of the budget goes to the bits of the largest first-order damage
  there, among those the stored weights' ranking did not take: the stored weights' gradient ranks the
  flips that random faults make near the stored point, and it misses the flips an adversary (the
  worst case) makes, whose damage shows at the point it has reached (on the zoo's LM, the 71
  flips of the worst case with its top 0.5% of bits protected rank from the 25,000th on at the stored
  weights, all past the budget's 24,095);
- ``random``: n bits uniformly without replacement (a seeded draw);
- ``magnitude``: ``|w_i| * |delta_ib|``, the largest weights' most significant bits first.

Ties go by position (a stable sort), so a choice is a pure function of its inputs.

**What the redundancy does** (for flips drawn at a rate p per bit; a fault with ``count`` flips per
chip uses p = count / M for the extra storage, see below):

- TMR: each protected bit is stored three times and read by majority vote; it reads wrong when at
  least two of its three copies flip, with probability 3p^2 - 2p^3. The copies are independent: a
  drawn flip of the primary copy survives when one of the other two also flips (1 - (1-p)^2), and a
  protected bit whose two other copies both flip (p^2, drawn sparsely) reads wrong as well.
- ECC: SECDED (72, 64): the protected bits, in position order, are packed 64 to a word, with 8 check
  bits per word (the last word may hold fewer data bits; it still has 8 check bits). The check bits
  sit in the same memory and flip at the same rate. A word with one flip (data or check) is corrected;
  with two, the error is detected and not corrected: every weight with a data bit in that word reads
  NaN (a detected unrecoverable error, counted as a DUE by every analysis); with three or more the
  data flips pass silently (a miscorrection, which could flip one more bit, is not modelled).
- With ``count`` flips per chip (statistical fault injection), the copies and check bits are outside
  the drawn population: a TMR bit is then always outvoted, an ECC word fails only by data flips.

The same draw of the chip's flips is made with and without protection (the extra draws come after
it), so protected and unprotected chips of one trial share their faults: comparisons between
strategies see common random numbers.

**Covering set.** The unprotected bits keep the fault's covering set (a
:class:`~hwfault.constraints.BitSet` with the protected bits' deltas zeroed, budget the Binomial
quantile over the M - n unprotected bits). The residual of the protected bits is a part of its own:
any protected bits up to the quantile of their silent flips at the coverage: TMR Binomial(n,
3p^2 - 2p^3); ECC the sum over words of the data flips of words with three or more flips (computed
exactly by convolution). Detected ECC words are DUEs, not silent corruption, and are not in the set.
The two parts share the fault's miss probability (:meth:`ProtectedChip.constraint`).

**Cost**: redundancy bits (TMR 2 per protected bit; ECC 8 per word), the index of the protected bits
(the smaller of a bitmap over the M bits and the Golomb-Rice code of the gaps between their sorted
positions, with the Rice parameter floor(log2(M / n)): about n (log2(M / n) + 2) bits), and per read
of the weights one majority vote per protected bit (TMR) or one syndrome decode per word (ECC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import HwfaultError
from ..base import binomial_budget, sample_positions

__all__ = ["ADVERSARY_SHARE", "ECC_DATA", "ECC_CHECK", "ProtectedBits", "budget_bits", "bit_scores", "choose", "poisoned"]

ECC_DATA, ECC_CHECK = 64, 8
ADVERSARY_SHARE = 0.5  # of a ranked budget, given a worst-case point's gradient


def budget_bits(budget, total: int) -> int:
    """The number of bits a budget protects: a share (float in (0, 1]) of ``total``, or a count (int)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0 or \
            (isinstance(budget, float) and (budget > 1 or not math.isfinite(budget))):
        raise HwfaultError(f"expected a budget as a share in (0, 1] or a number of bits >= 1, got {budget!r}")
    if isinstance(budget, float):
        return max(1, min(total, round(budget * total)))
    if budget > total:
        raise HwfaultError(f"budget of {budget:,} bits: the chip stores only {total:,} weight bits")
    return int(budget)


def bit_scores(view, strategy: str, grad: torch.Tensor | None = None, gen: torch.Generator | None = None, *,
               signed: bool = False) -> torch.Tensor:
    """(k * bits,) float64: each stored bit's score under ``strategy`` (larger: protected first).
    ``signed``: rank by the signed gain g * delta (the adversary's), not its magnitude."""
    d = view.bit_deltas().double()
    finite = torch.isfinite(d)
    if strategy == "ranked":
        if grad is None:
            raise HwfaultError("the ranked strategy needs the loss gradient (give the data to rank on)")
        gain = grad.double().reshape(-1, 1) * torch.where(finite, d, torch.zeros_like(d))
        s = torch.where(finite, gain.abs() if signed is False else gain, torch.full_like(d, math.inf))
    elif strategy == "magnitude":
        s = torch.where(finite, view.w_q.double().abs().reshape(-1, 1) * d.abs(), torch.full_like(d, math.inf))
    elif strategy == "random":
        s = torch.rand(d.shape, generator=gen, dtype=torch.float64)
    else:
        raise HwfaultError(f"unknown strategy '{strategy}' (choose from: ranked, random, magnitude)")
    return s.reshape(-1)


def choose(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The flat positions of the ``n`` largest scores (ties: lower position first), sorted."""
    order = torch.sort(scores, descending=True, stable=True).indices[:n]
    return order.sort().values


def poisoned(idx: torch.Tensor, new: torch.Tensor, poison: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx, new)`` with the elements ``poison`` reading NaN (sorted indices)."""
    if poison.numel() == 0:
        return idx, new
    all_idx = torch.unique(torch.cat([idx, poison]))
    out = torch.full((all_idx.numel(),), math.nan, dtype=torch.float64)
    keep = ~torch.isin(all_idx, poison)
    if idx.numel():
        out[keep] = new[torch.searchsorted(idx, all_idx[keep])]
    return all_idx, out


@dataclass(frozen=True, eq=False)
class ProtectedBits:
    """The protected stored bits of a chip: ``bits`` are sorted flat positions ``element * nbits + bit``
    over the ``total`` = k x nbits stored element bits; ``scheme`` is ``ecc`` or ``tmr``."""

    scheme: str
    bits: torch.Tensor
    nbits: int
    total: int
    strategy: str = "ranked"
    budget: object = None

    @property
    def n(self) -> int:
        return int(self.bits.numel())

    @property
    def words(self) -> int:
        return -(-self.n // ECC_DATA)

    def hit(self, pos: torch.Tensor) -> torch.Tensor:
        """Which of the flat bit positions ``pos`` are protected."""
        if self.n == 0 or pos.numel() == 0:
            return torch.zeros(pos.shape, dtype=torch.bool)
        i = torch.searchsorted(self.bits, pos).clamp(max=self.n - 1)
        return self.bits[i] == pos

    def mask(self) -> torch.Tensor:
        """(k, nbits) bool: the protected bits."""
        m = torch.zeros(self.total, dtype=torch.bool)
        m[self.bits] = True
        return m.view(-1, self.nbits)

    def survivors(self, pos: torch.Tensor, gen: torch.Generator, p: float, *,
                  counted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The drawn element-bit flips ``pos`` after the redundancy (see the module docstring), and the
        elements that read NaN (a detected, uncorrected ECC word). ``p``: the flips' rate per bit."""
        h = self.hit(pos)
        prot, keep = pos[h], pos[~h]
        none = torch.zeros(0, dtype=torch.long)
        p = min(max(float(p), 0.0), 1.0)
        if self.scheme == "tmr":
            if counted:
                return keep, none
            u = torch.rand(prot.numel(), generator=gen, dtype=torch.float64)
            out = prot[u < 1 - (1 - p) ** 2]
            extra = self.bits[sample_positions(self.n, p * p, gen)]  # the two other copies flipped
            extra = extra[~torch.isin(extra, prot)]
            return torch.cat([keep, out, extra]), none
        word = torch.searchsorted(self.bits, prot) // ECC_DATA
        check = none if counted else sample_positions(self.words * ECC_CHECK, p, gen) // ECC_CHECK
        counts = torch.bincount(torch.cat([word, check]), minlength=self.words)
        out = prot[counts[word] >= 3]
        bad = torch.nonzero(counts == 2).reshape(-1)
        poison = none
        if bad.numel():
            ranks = torch.arange(self.n)
            poison = torch.unique(self.bits[torch.isin(ranks // ECC_DATA, bad)] // self.nbits)
        return torch.cat([keep, out]), poison

    def unprotected(self, deltas: torch.Tensor) -> torch.Tensor:
        """``deltas`` (k, nbits) with the protected bits' entries zeroed."""
        return torch.where(self.mask(), torch.zeros_like(deltas), deltas)

    def only(self, deltas: torch.Tensor) -> torch.Tensor:
        """``deltas`` (k, nbits) with every entry but the protected bits' zeroed."""
        return torch.where(self.mask(), deltas, torch.zeros_like(deltas))

    def residual_rate(self, p: float) -> float:
        """TMR: the probability that a protected bit reads wrong, 3p^2 - 2p^3."""
        return 3 * p * p - 2 * p ** 3

    def residual_budget(self, p: float, coverage: float, *, counted: bool = False) -> int:
        """The most silent flips of protected bits at the coverage (the residual part's budget)."""
        if self.n == 0 or p <= 0:
            return 0
        if self.scheme == "tmr":
            return 0 if counted else binomial_budget(coverage, self.n, self.residual_rate(p))
        return ecc_silent_quantile(self.n, p, coverage, 0 if counted else ECC_CHECK)

    def cost(self) -> dict:
        """Storage bits and extra operations per read of the weights."""
        redundancy = 2 * self.n if self.scheme == "tmr" else ECC_CHECK * self.words
        index = min(self.total, rice_bits(self.bits))
        ops = self.n if self.scheme == "tmr" else self.words
        return {"redundancy_bits": redundancy, "index_bits": index, "cost_bits": redundancy + index,
                "extra_ops": ops, "ops_unit": "majority votes per read of the weights" if self.scheme == "tmr"
                else "SECDED syndrome decodes (one per 64-bit word) per read of the weights",
                "protected_bits": self.n, "words": self.words if self.scheme == "ecc" else None,
                "storage_overhead": redundancy / max(self.total, 1)}

    def describe(self) -> dict:
        return {"kind": self.scheme, "strategy": self.strategy, "budget": self.budget, "protected_bits": self.n,
                "share": self.n / max(self.total, 1)}


def rice_bits(positions: torch.Tensor) -> int:
    """Bits of the Golomb-Rice code (parameter r = floor(log2(span / n))) of the gaps between sorted
    positions: each gap g costs r + 1 + floor(g / 2^r) bits."""
    n = int(positions.numel())
    if n == 0:
        return 0
    gaps = torch.diff(positions, prepend=positions.new_tensor([-1])) - 1
    r = max(0, int(math.floor(math.log2(max(1.0, float(positions[-1] + 1) / n)))))
    return int(n * (r + 1) + int((gaps >> r).sum()))


def _word_pmf(d: int, p: float, check: int) -> np.ndarray:
    """P(S = s), s = 0..d: the data flips a SECDED word of ``d`` data and ``check`` check bits passes
    silently (S = D when D + C >= 3, else 0)."""
    from scipy import stats

    j = np.arange(d + 1)
    pd = stats.binom.pmf(j, d, p)
    c_enough = stats.binom.sf(2 - j, check, p) if check else (j >= 3).astype(float)  # P(C >= 3 - j)
    c_enough = np.where(j >= 3, 1.0, c_enough)
    out = pd * c_enough
    out[0] = 0.0
    out[0] = 1.0 - out.sum()
    return out


def _conv(a: np.ndarray, b: np.ndarray, limit: int) -> np.ndarray:
    from scipy.signal import fftconvolve

    out = fftconvolve(a, b)[:limit] if min(len(a), len(b)) > 64 else np.convolve(a, b)[:limit]
    return np.clip(out, 0.0, None)


def ecc_silent_quantile(n: int, p: float, coverage: float, check: int = ECC_CHECK) -> int:
    """The smallest s with P(silent data flips over all words <= s) >= coverage, for ``n`` protected
    bits in words of 64 (the distribution by convolution, truncated where the coverage is reached)."""
    full, rest = divmod(n, ECC_DATA)
    limit = 256
    while True:
        acc = np.ones(1)
        base, w = _word_pmf(ECC_DATA, p, check), full
        while w:
            if w & 1:
                acc = _conv(acc, base, limit)
            w >>= 1
            if w:
                base = _conv(base, base, limit)
        if rest:
            acc = _conv(acc, _word_pmf(rest, p, check), limit)
        cdf = np.cumsum(acc)
        hit = np.nonzero(cdf >= coverage - 1e-12)[0]
        if hit.size or limit > n:
            return int(hit[0]) if hit.size else n
        limit *= 4
