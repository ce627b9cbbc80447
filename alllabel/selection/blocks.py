"""Running work over row blocks of a similarity: in threads here, or on a Dask cluster.

The selection's heavy part is a scan over every row of U in blocks. Rows are independent, so a
block function ``fn(sim, idx, *args)`` computes its own rows and returns small per-row results
(top lists, row sums, row maxima). The same function runs in a thread of this process or on a
Dask worker that holds a copy of the similarity; results come back in block order, so merging
them is placing rows, exact by construction (no value depends on which worker or block size
produced it; see similarity.py).

* ``LocalRunner(workers)``: a thread pool (numpy, BLAS and the numba kernels release the GIL).
  While it runs, BLAS is limited to one thread per worker so the two levels do not fight.
* ``DaskRunner(address)``: ``dask.distributed``; the similarity is scattered once to every
  worker, each block is one task.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class BlockRunner(Protocol):
    def map(
        self, fn: Callable, sim, blocks: Sequence[np.ndarray], *args
    ) -> Iterator[tuple[np.ndarray, object]]: ...


def default_workers() -> int:
    """Threads for the scan: ``ALLABEL_SCAN_THREADS`` or the usable cores."""
    env = os.environ.get("ALLABEL_SCAN_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _blas_limit(n_threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a runtime requirement
        return nullcontext()
    return threadpool_limits(limits=n_threads, user_api="blas")


class LocalRunner:
    """Blocks in a thread pool of ``workers`` threads (1: in the calling thread)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()

    def map(
        self, fn: Callable, sim, blocks: Sequence[np.ndarray], *args
    ) -> Iterator[tuple[np.ndarray, object]]:
        if self.workers == 1 or len(blocks) <= 1:
            for idx in blocks:
                yield idx, fn(sim, idx, *args)
            return
        with (
            _blas_limit(1),
            ThreadPoolExecutor(self.workers, thread_name_prefix="alllabel-scan") as pool,
        ):
            # At most a few blocks ahead of the consumer, so results never pile up.
            pending: list = []
            it = iter(blocks)
            for idx in it:
                pending.append((idx, pool.submit(fn, sim, idx, *args)))
                if len(pending) >= 2 * self.workers:
                    break
            while pending:
                idx, fut = pending.pop(0)
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(fn, sim, nxt, *args)))
                yield idx, fut.result()


class DaskRunner:
    """Blocks as tasks on a ``dask.distributed`` cluster (scheduler ``address`` or a ``Client``).

    Every worker needs the whole similarity (the column side of each row); it is sent once per
    similarity object and reused by every later map (scan, re-ranking, depths).
    """

    def __init__(self, address_or_client, *, in_flight: int | None = None):
        try:
            from distributed import Client
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "a Dask scheduler is configured but dask.distributed is missing: pip install distributed"
            ) from e
        if isinstance(address_or_client, Client):
            self.client, self._own = address_or_client, False
        else:
            self.client, self._own = Client(address_or_client, set_as_default=False), True
        self.in_flight = in_flight
        self._scattered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _remote(self, sim):
        with self._lock:
            fut = self._scattered.get(sim)
            if fut is None:
                fut = self.client.scatter(sim, broadcast=True, hash=False)
                self._scattered[sim] = fut
            return fut

    def map(
        self, fn: Callable, sim, blocks: Sequence[np.ndarray], *args
    ) -> Iterator[tuple[np.ndarray, object]]:
        remote = self._remote(sim)
        limit = self.in_flight or max(4, 2 * sum(self.client.nthreads().values()))
        pending: list = []
        it = iter(blocks)

        def submit(idx):
            pending.append((idx, self.client.submit(fn, remote, idx, *args, pure=False)))

        for idx in it:
            submit(idx)
            if len(pending) >= limit:
                break
        while pending:
            idx, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt)
            yield idx, fut.result()
            fut.release()

    def close(self) -> None:
        self._scattered.clear()
        if self._own:
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_runner(scheduler: str | None = None, workers: int | None = None) -> BlockRunner:
    """A ``DaskRunner`` when a scheduler address is given, else a ``LocalRunner``."""
    if scheduler:
        log.info("scan on the Dask cluster at %s", scheduler)
        return DaskRunner(scheduler)
    return LocalRunner(workers)
