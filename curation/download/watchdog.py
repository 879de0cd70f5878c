"""img2dataset's local distributor, replaced by one that notices a dead worker at once.

img2dataset's ``multiprocessing_distributor`` hands shards to a ``multiprocessing.Pool``. When a
worker dies (the kernel's memory killer, a segfault in a decoder, ``kill -9``), the Pool starts a
new worker but the dead one's task is never answered, so ``imap_unordered`` waits forever: the
command hangs with no output. :func:`watchdog_distributor` has the same signature and runs each
shard in a spawned worker of its own pool, waiting on each worker's pipe *and* its process
sentinel: a death is seen the moment it happens. The shard is retried (``max_shard_retry``) in a
fresh worker, then recorded as failed in ``POOL/_download/failed/NNNNN.json`` with the reason (the
signal, and a hint at memory), and the other shards go on. The caller reads those records. What
the failed attempt wrote of the shard (a tar cut short, a parquet without footer) is removed, so
no later stage lists a shard that is not there.

A worker starts without torch: img2dataset's tar writer comes from webdataset, which imports
torch only for its optional PyTorch classes (and has stand-ins without it). torch is half of a
worker's imports (~1.5 s of CPU), paid again by every worker and every append or retry pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import pickle
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from curation.core import storage
from curation.core.io import atomic_write_text, read_json

log = logging.getLogger(__name__)

FAILED_DIR = "_download/failed"
Row = tuple[int, str]  # (shard id, shard input file), what img2dataset's reader yields


def failed_path(pool: Path, shard: str) -> Path:
    return storage.location(pool) / FAILED_DIR / f"{shard}.json"


def shard_failures(pool: Path) -> dict[str, str]:
    """Shard -> reason for every shard the last download gave up on."""
    folder = storage.location(pool) / FAILED_DIR
    return {p.stem: read_json(p)["reason"] for p in storage.list_files(folder, "*.json")}


def without_torch() -> None:
    """Make ``import torch`` fail in this process (``find_spec`` says it is absent), unless it is in."""
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def _worker(conn: Connection, payload: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    without_torch()  # before the downloader's classes (img2dataset, webdataset) are imported
    downloader = pickle.loads(payload)
    while True:
        row = conn.recv()
        if row is None:
            return
        ok, _ = downloader(row)
        conn.send(ok)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    row: Row | None = None


def death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        return f"worker died: killed by {name}{hint}"
    return f"worker died: exit status {exitcode}"


class Watchdog:
    """Runs shards in at most ``processes`` spawned workers; see the module docstring."""

    def __init__(self, processes: int, downloader: Any, max_shard_retry: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.processes = processes
        self.downloader = downloader
        self.payload = pickle.dumps(downloader)  # unpickled by the worker once torch is kept out
        self.max_shard_retry = max_shard_retry
        self.pool = storage.location(downloader.output_folder)
        self.shard_digits = int(downloader.oom_shard_count)
        self.attempts: dict[int, int] = {}
        self.retry: deque[Row] = deque()
        self.workers: list[_Worker] = []

    def shard_name(self, row: Row) -> str:
        return f"{row[0]:0{self.shard_digits}d}"

    def run(self, rows: Iterable[Row]) -> dict[str, str]:
        source: Iterator[Row] = iter(rows)
        failures: dict[str, str] = {}
        try:
            while True:
                self._hand_out(source)
                busy = [w for w in self.workers if w.row is not None]
                if not busy:
                    return failures
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    self._collect(worker, ready, failures)
        finally:
            self._stop()

    def _hand_out(self, source: Iterator[Row]) -> None:
        """Give each idle worker a shard, starting workers (up to ``processes``) only for real work."""
        while True:
            for dead in [w for w in self.workers if w.row is None and not w.process.is_alive()]:
                self.workers.remove(dead)  # died while idle: no shard lost, just replace it
            idle = next((w for w in self.workers if w.row is None), None)
            if idle is None and len(self.workers) >= self.processes:
                return
            row = self.retry.popleft() if self.retry else next(source, None)
            if row is None:
                return
            if idle is None:
                idle = self._start()
                self.workers.append(idle)
            self._assign(idle, row)

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker, args=(child, self.payload), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _assign(self, worker: _Worker, row: Row) -> None:
        self.attempts[row[0]] = self.attempts.get(row[0], 0) + 1
        worker.row = row
        worker.conn.send(row)

    def _collect(self, worker: _Worker, ready: list[Any], failures: dict[str, str]) -> None:
        row = worker.row
        assert row is not None
        if worker.conn in ready:
            try:
                ok = worker.conn.recv()
            except EOFError:  # it died right after sending nothing
                ok = None
            if ok is not None:
                worker.row = None
                self._settle(row, None if ok else "img2dataset failed the shard (see its log)", failures)
                return
        if worker.conn in ready or worker.process.sentinel in ready:
            worker.process.join(timeout=5)
            reason = death_reason(worker.process.exitcode)
            log.warning("shard %s: %s", self.shard_name(row), reason)
            worker.conn.close()
            self.workers.remove(worker)
            self._settle(row, reason, failures)

    def _settle(self, row: Row, reason: str | None, failures: dict[str, str]) -> None:
        name = self.shard_name(row)
        record = failed_path(self.pool, name)
        if reason is None:
            storage.remove(record)
            return
        storage.forget_listings(self.pool)  # the worker wrote from another process
        if not (self.pool / f"{name}_stats.json").exists():  # unfinished: a torn tar, no parquet footer
            for ext in ("tar", "parquet"):
                storage.remove(self.pool / f"{name}.{ext}")
        if self.attempts[row[0]] <= self.max_shard_retry:
            log.warning("shard %s: retrying (%s)", name, reason)
            self.retry.append(row)
            return
        failures[name] = reason
        attempts = self.attempts[row[0]]
        atomic_write_text(record, json.dumps({"shard": name, "reason": reason, "attempts": attempts}))

    def _stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):  # it died meanwhile
                worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


def watchdog_distributor(
    processes_count: int, downloader: Any, reader: Iterable[Row], _subjob_size: int, max_shard_retry: int
) -> None:
    """Drop-in for ``img2dataset.distributor.multiprocessing_distributor``."""
    failures = Watchdog(processes_count, downloader, max_shard_retry).run(reader)
    for shard, reason in failures.items():
        print(f"shard {shard} failed: {reason}")
