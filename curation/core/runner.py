"""The one shard runner every engine calls.

Engines only decide *where* a shard runs; what happens to it is here: skip it if its completion
marker exists, otherwise run the job into a private staging folder, move each output file into
place, write the shard's stage stats, and write the marker last. A crash at any point leaves no
half-written file in the output, and a rerun redoes exactly the shards without a marker.

On local disk files are moved with an atomic rename and the staging folder is ``out/.staging``.
Object storage has no rename, so there the staging folder is local and the commit is: write an
intent (``_pending/<shard>.json``, the objects about to be written), upload the objects, the stats,
the marker, then delete the intent. A rerun (:func:`sweep_leftovers`) deletes the objects of every
intent whose shard has no marker, so a killed upload leaves no stray object behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.core import storage
from curation.core.io import atomic_write_json, read_json
from curation.core.stats import StageStats

log = logging.getLogger(__name__)


class ShardJob(ABC):
    """A picklable description of per-shard work. Stage code lives in ``run_shard``; no engine logic."""

    name: str = "job"
    costly_setup: bool = False  # setup() loads a model: engines keep long-lived workers (Ray: actors)
    engine: Any = None  # the engine running the job, set by run_job only while prepare() runs

    @abstractmethod
    def shards(self) -> list[str]:
        """All shard ids of the job's input."""

    @abstractmethod
    def output_dir(self) -> Path:
        """Where outputs, stats and markers go: a local path every worker sees, or a URL."""

    def prepare(self) -> None:
        """Driver-side work over all shards, once, before any shard runs (phase 1 of a global view).

        ``self.engine`` is set meanwhile, so phase 1 may schedule shard jobs of its own on it."""

    def setup(self) -> None:
        """Per-worker initialisation (load a model once, not once per shard)."""

    @abstractmethod
    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        """Process one shard, writing final-named files into ``staging``; return its stats."""


@dataclass
class ShardOutcome:
    shard: str
    status: str  # "done" | "skipped" | "failed"
    stats: list[StageStats] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 0


def marker_path(out: Path, shard: str) -> Path:
    return out / "_done" / f"{shard}.done"


def stats_path(out: Path, shard: str) -> Path:
    return out / "_stats" / f"{shard}.json"


def pending_path(out: Path, shard: str) -> Path:
    return out / "_pending" / f"{shard}.json"


def is_done(out: Path, shard: str) -> bool:
    return marker_path(out, shard).exists()


def done_shards(out: Path) -> set[str]:
    """Shards with a completion marker, from one listing (one request on object storage)."""
    return {p.name.removesuffix(".done") for p in storage.list_files(out / "_done", "*.done")}


def load_shard_stats(out: Path, shard: str) -> list[StageStats]:
    return [StageStats.from_dict(d) for d in read_json(stats_path(out, shard))["stages"]]


TEMP_GLOB = ".*.tmp"  # curation.core.io.atomic_path's temp files: ".<name>.<random>.tmp"


def sweep_leftovers(out: Path) -> list[Path]:
    """Remove what a killed run left under ``out``: its staging folders and atomic-write temp files.

    Called before a job runs (again): a kill inside an atomic write leaves ``.<name>.<random>.tmp``
    next to the file it was writing (a marker, stats, an output), and a kill mid-shard leaves
    ``.staging/<shard>``. Neither is ever read; a rerun would otherwise carry them forever.
    """
    if storage.is_remote(out):
        return _sweep_remote(out)
    out = Path(out)
    removed = [p for p in out.rglob(TEMP_GLOB) if p.is_file()] if out.exists() else []
    for p in removed:
        p.unlink(missing_ok=True)
    staging = out / ".staging"
    if staging.exists():
        removed.append(staging)
        shutil.rmtree(staging, ignore_errors=True)
    if removed:
        log.info("removed %d leftovers of an interrupted run under %s", len(removed), out)
    return removed


def _sweep_remote(out: Path) -> list[Path]:
    """Delete the objects of every commit that did not reach its marker, then the intents."""
    removed: list[Path] = []
    for intent in storage.list_files(out / "_pending", "*.json"):
        shard = intent.name.removesuffix(".json")
        if not is_done(out, shard):
            for rel in read_json(intent)["objects"]:
                storage.remove(out / rel)
                removed.append(out / rel)
            storage.remove(stats_path(out, shard))
        storage.remove(intent)
        removed.append(intent)
    if removed:
        log.info("removed %d leftovers of an interrupted run under %s", len(removed), storage.url(out))
    return removed


def _staging(out: Path, shard: str) -> Path:
    if storage.is_remote(out):
        return Path(tempfile.mkdtemp(prefix=f"curation-staging-{shard}-"))
    staging = out / ".staging" / shard
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def process_shard(job: ShardJob, shard: str, retries: int = 0) -> ShardOutcome:
    """Run one shard to completion (or record why it failed); safe to call again after any crash."""
    out = job.output_dir()
    if is_done(out, shard):
        return ShardOutcome(shard, "skipped", load_shard_stats(out, shard))
    start = time.perf_counter()
    error = None
    for attempt in range(1, retries + 2):
        staging = _staging(out, shard)
        try:
            stats = job.run_shard(shard, staging)
            _commit(out, shard, staging, stats)
            return ShardOutcome(shard, "done", stats, time.perf_counter() - start, attempts=attempt)
        except Exception as exc:
            error = storage.redact(f"{type(exc).__name__}: {exc}")
            log.warning("shard %s of %s failed (attempt %d): %s", shard, job.name, attempt, error)
            log.debug("%s", traceback.format_exc())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ShardOutcome(shard, "failed", [], time.perf_counter() - start, error, attempts=retries + 1)


def _commit(out: Path, shard: str, staging: Path, stats: list[StageStats]) -> None:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    remote = storage.is_remote(out)
    if remote:  # the intent first: a kill from here on leaves a list of what to delete
        objects = [src.relative_to(staging).as_posix() for src in files]
        atomic_write_json(pending_path(out, shard), {"shard": shard, "objects": objects})
    for src in files:
        dst = out / src.relative_to(staging).as_posix()
        if remote:
            storage.upload(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    stages = [s.to_dict() for s in stats]
    atomic_write_json(stats_path(out, shard), {"shard": shard, "stages": stages})
    atomic_write_json(marker_path(out, shard), {"shard": shard, "finished": time.time()})
    if remote:
        storage.remove(pending_path(out, shard))
