"""Process-level tuning for long fault-injection runs.

A campaign evaluates the same model thousands of times; each forward pass allocates activations of
the same sizes and frees them again. glibc's malloc serves large blocks with mmap and returns them
with munmap, so every trial pays page faults and system time for memory it just gave back (on the
residual zoo model about a third of a fault-free evaluation). Raising the mmap and trim thresholds
keeps those blocks in the heap, where the next trial reuses them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: blocks below it are recycled in the heap, not mapped and unmapped
_done = False


def tune_allocator() -> bool:
    """Keep freed activation buffers in the heap for reuse (glibc only; elsewhere a no-op).

    Idempotent; returns whether the allocator was tuned. The process keeps up to 1 GiB of freed
    memory for reuse instead of handing it back to the system at once.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    _done = ok
    return ok


class single_thread:
    """Run the block with one torch intra-op thread (restored after it): trials whose rows must be
    bit-identical whichever process computes them (a local run, any Dask worker) run so, since a
    reduction split over threads may round differently with another thread count."""

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)

