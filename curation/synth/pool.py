"""An ordered process pool: parallel rendering whose output never depends on the worker count.

Every task carries its own item indices and derives per-item generators from them
(:mod:`curation.synth.rand`), so the same bytes come out with 1 worker or 16; results come back in
task order. One pool serves a whole run, so worker start-up (imports) is paid once.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else max(1, len(os.sched_getaffinity(0)))


class Workers:
    """``map`` in task order on ``n`` processes (``n <= 1``: in this process, no pool)."""

    def __init__(self, n: int):
        self.n = resolve_workers(n)
        self._pool: ProcessPoolExecutor | None = None

    def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], on_done: Callable[[R], None] | None = None
    ) -> Iterator[R]:
        if self.n <= 1 or len(tasks) <= 1:
            results: Iterator[R] = map(fn, tasks)
        else:
            results = self._executor().map(fn, tasks)
        for r in results:
            if on_done:
                on_done(r)
            yield r

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the caller may hold threads (progress bars, servers) that fork would copy.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.n, mp_context=ctx)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + size)) for s in range(0, n, size)]
