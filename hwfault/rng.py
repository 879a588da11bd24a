"""Seeds: every random draw in hwfault is a pure function of (seed, keys).

A Monte-Carlo trial, a random corruption direction or a campaign trial uses a generator seeded
from ``trial_seed(seed, t)``, so trial t is reproducible alone, in any process, in any order.
"""

from __future__ import annotations

import numpy as np
import torch

from . import validate


def trial_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, *keys): independent streams, reproducible per trial."""
    validate.seed(seed)
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from (seed, *keys)."""
    return torch.Generator().manual_seed(trial_seed(seed, *keys))
