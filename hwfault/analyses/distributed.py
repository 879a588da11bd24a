"""Trials on Dask: the one runner that campaigns, ``estimate``'s Monte-Carlo chips and ``sweep``'s
random corruptions share.

``workers=N`` starts a local cluster of N single-threaded worker processes; ``scheduler=ADDRESS``
joins an existing one. Every trial is a pure function of (seed, trial index) and runs
single-threaded on both paths, so a distributed run returns exactly what a local run returns.

What a worker needs it rebuilds: a model or data set given by name or path is loaded again on the
worker (as a campaign's :class:`~hwfault.analyses.campaign.run.Recipe` is); an in-process object
(an ``nn.Module``, a dataset) is pickled and shipped to every worker once (:meth:`Runner.ship`).
Campaigns take names or paths only (every worker rebuilds its context and journals nothing it
cannot name).

Nothing here imports Dask until a runner starts: ``import hwfault.cli`` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .. import validate
from ..errors import HwfaultError

RETRIES = 3  # a chunk whose worker died runs again elsewhere


def check(workers: int | None, scheduler: str | None) -> None:
    """The ``--workers``/``--scheduler`` pair, checked before any work: at most one, and N >= 1."""
    if workers is not None and scheduler:
        raise HwfaultError("give --workers or --scheduler, not both")
    if workers is not None:
        validate.integer("--workers", workers, lo=1)
    if scheduler is not None and not str(scheduler).strip():
        raise HwfaultError("expected --scheduler as an address (tcp://host:port), got ''")


def chunk_size(todo: int, workers: int | None) -> int:
    """Trials per task: about 8 tasks per worker, at most 64 trials each."""
    return max(1, min(64, math.ceil(todo / (8 * (workers or 1)))))


def chunks(ids: Iterable[int], size: int) -> Iterator[list[int]]:
    """``ids`` in lists of ``size`` (the last one shorter), lazily."""
    it = iter(ids)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class Runner:
    """A Dask client (and the local cluster it started, if any) that runs chunks of trials."""

    def __init__(self, client, cluster=None, workers: int | None = None):
        self.client, self.cluster = client, cluster
        self.workers = workers or len(client.scheduler_info().get("workers", {})) or 1

    def ship(self, obj):
        """``obj`` on every worker (pickled once): pass the returned future to :meth:`map`."""
        try:
            return self.client.scatter(obj, broadcast=True, hash=False)
        except Exception as e:  # an object that does not pickle (an open session, a lambda in a loader, ...)
            raise HwfaultError(f"cannot ship the model or data to the Dask workers ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}); pass them "
                               f"by name or path, or run without --workers/--scheduler") from None

    def map(self, fn: Callable, chunks_: Iterator[list[int]], *args) -> Iterator[list]:
        """``fn(*args, chunk)`` for every chunk, in completion order, with a bounded window of chunks
        in flight (the chunk list is never materialised)."""
        from distributed import as_completed

        window = 4 * max(1, self.workers)
        pending = as_completed()
        for c in itertools.islice(chunks_, window):
            pending.add(self.client.submit(fn, *args, c, pure=False, retries=RETRIES))
        for fut in pending:
            out = fut.result()
            nxt = next(chunks_, None)
            if nxt is not None:
                pending.add(self.client.submit(fn, *args, nxt, pure=False, retries=RETRIES))
            yield out

    def trials(self, fn: Callable, n: int, *args, advance: Callable[[int], None] | None = None,
               per_trial: int = 1) -> list:
        """``[row of trial 0, ..., row of trial n-1]`` where ``fn(*args, chunk)`` returns
        ``[(t, row) for t in chunk]``; ``advance(len(chunk) * per_trial)`` as chunks land."""
        rows: dict[int, object] = {}
        for out in self.map(fn, chunks(range(n), chunk_size(n, self.workers)), *args):
            rows.update(out)
            if advance:
                advance(len(out) * per_trial)
        return [rows[t] for t in range(n)]

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def connect(workers: int | None = None, scheduler: str | None = None) -> Runner:
    """A :class:`Runner` on a new local cluster of ``workers`` processes or on the cluster at
    ``scheduler``; a one-line :class:`~hwfault.errors.HwfaultError` when neither works."""
    check(workers, scheduler)
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="5s")
        except Exception as e:  # a refused or garbled connection raises anything from OSError to MemoryError
            raise HwfaultError(f"cannot reach the Dask scheduler at {scheduler}: {type(e).__name__}"
                               + (f" ({str(e).strip().splitlines()[0][:100]})" if str(e).strip() else "")) from None
        return Runner(client)
    import logging

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None, processes=True,
                           silence_logs=logging.ERROR)  # no worker chatter on the terminal
    try:
        return Runner(Client(cluster), cluster, workers)
    except BaseException:
        cluster.close()
        raise


@contextlib.contextmanager
def runner(workers: int | None = None, scheduler: str | None = None) -> Iterator[Runner | None]:
    """A :class:`Runner` for the block (closed after it), or None when neither is given (a local run)."""
    check(workers, scheduler)
    if workers is None and not scheduler:
        yield None
        return
    r = connect(workers, scheduler)
    try:
        yield r
    finally:
        r.close()


def on_dask(fn):
    """Give an analysis ``workers=`` and ``scheduler=``: checked, and the cluster started or the
    scheduler reached, before the analysis does any work; the analysis gets the open :class:`Runner`
    as ``runner=`` (closed when it returns) and runs locally without one."""

    @functools.wraps(fn)
    def run(*args, workers: int | None = None, scheduler: str | None = None, **kwargs):
        with runner(workers, scheduler) as rn:
            if rn is not None:
                kwargs["runner"] = rn
            return fn(*args, **kwargs)

    return run


# ----------------------------------------------------------------------------- what a worker rebuilds


def source(arg, resolved):
    """What a worker rebuilds an analysis's model or data argument from: the name or path itself, or
    (for an in-process object) the resolved object, shipped pickled."""
    return str(arg) if isinstance(arg, (str, Path)) else resolved


def new_key() -> str:
    """A fresh identity for a job shipped to workers (their per-process cache is keyed by it)."""
    return uuid.uuid4().hex


_BUILT: dict[str, object] = {}


def built(key: str, build: Callable[[], object]):
    """This process's ``build()`` for job ``key``, built once (the last job's only: memory stays bounded)."""
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = build()
    return _BUILT[key]


def device_type(module) -> str | None:
    """Where workers run a model the caller placed on ``module``'s device: its device type (each
    worker then takes its own GPU, :func:`hwfault.devices.worker_device`, as campaign workers do);
    None for the CPU."""
    from ..devices import device_of

    dev = device_of(module)
    return None if dev.type == "cpu" else dev.type


def load(model_src, data_src, *, output=None, device: str | None = None):
    """The worker's model and data: loaded from a name or path (frozen, the test split), or the
    shipped objects; the model moved to this worker's ``device`` (None: left on the CPU).

    A shipped model is deep-copied: trials perturb the worker's model in place, and the shipped object
    itself stays in the worker's store, from where Dask may copy it to another worker at any time
    (its memory manager drops and re-fetches replicas) - from a thread of its own, while a trial runs.
    A copy taken mid-trial would carry that trial's fault to every trial of the other worker."""
    import copy

    from ..data import load_data
    from ..inputs import load_model

    model = load_model(model_src, requires_grad=False, output=output) if isinstance(model_src, str) \
        else copy.deepcopy(model_src)
    data = load_data(data_src, "test") if isinstance(data_src, str) else data_src
    if device is not None:
        from ..devices import to_device, worker_device

        model = to_device(model, worker_device(device))
    return model, data
