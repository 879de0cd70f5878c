"""Engines schedule shards; they never change what a shard's processing does.

Every engine calls :func:`curation.core.runner.process_shard` for each shard, so outputs, stats and
markers are identical whichever engine ran them. ``local`` is a process pool; ``spark`` and
``ray`` are entry points of ``clip_curation.engines`` (``pyproject.toml``), loaded when named.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from curation.core import storage
from curation.core.progress import shard_progress
from curation.core.registry import Registry
from curation.core.runner import ShardJob, ShardOutcome, load_shard_stats, stats_path, sweep_leftovers
from curation.core.stats import Funnel, StageStats, merge

log = logging.getLogger(__name__)


class Engine(ABC):
    name: str = ""
    distributor: str = ""  # img2dataset's name for this way of running work (download uses it)

    @abstractmethod
    def map_shards(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        """Run ``process_shard`` for every shard, yielding outcomes as they finish."""

    def start(self) -> None:
        """Start (or attach to) the cluster now, so tools that look for an active one find it."""

    def close(self) -> None:
        """Release cluster resources the engine started."""


ENGINES: Registry[Callable[..., Engine]] = Registry("engine", "engines")  # local, spark, ray, plugins


ATTACH_OPTION = {"spark": "master", "ray": "address"}  # how each cluster engine attaches to a cluster


def get_engine(name: str, **options: Any) -> Engine:
    """Build an engine by name; its module is imported only when asked for."""
    try:
        cls = ENGINES.get(name, "engine")
    except ModuleNotFoundError as exc:
        raise ValueError(f"engine {name!r} is not available: {exc}") from exc
    return cls(**options)


def engine_from_options(
    name: str, workers: int = 1, master: str | None = None, address: str | None = None
) -> Engine:
    """The engine a command line asks for: ``--master`` attaches Spark, ``--address`` attaches Ray."""
    given = {k: v for k, v in {"master": master, "address": address}.items() if v}
    wrong = sorted(k for k in given if ATTACH_OPTION.get(name) != k)
    if wrong:
        owner = {v: k for k, v in ATTACH_OPTION.items()}[wrong[0]]
        raise ValueError(f"--{wrong[0]} attaches the {owner} engine; it means nothing to --engine {name}")
    return get_engine(name, workers=workers, **given)


@contextmanager
def open_engine(
    name: str, workers: int = 1, master: str | None = None, address: str | None = None
) -> Iterator[Engine]:
    """One engine for several jobs (one Spark session or Ray instance), closed at the end."""
    eng = engine_from_options(name, workers, master, address)
    try:
        yield eng
    finally:
        eng.close()


@dataclass
class JobReport:
    """What a job did: per-shard outcomes and the stage stats merged over every finished shard."""

    job: str
    outcomes: list[ShardOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ShardOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def stats(self) -> list[StageStats]:
        return merge(s for o in self.outcomes for s in o.stats)

    def funnel(self) -> Funnel:
        return Funnel(self.stats)

    def summary(self) -> str:
        counts = {k: sum(o.status == k for o in self.outcomes) for k in ("done", "skipped", "failed")}
        return (
            f"{self.job}: {counts['done']} shards done, {counts['skipped']} skipped (already done), "
            f"{counts['failed']} failed"
        )


def run_job(
    job: ShardJob, engine: Engine | str = "local", retries: int = 1, **engine_options: Any
) -> JobReport:
    """Run ``job.prepare()`` once, then every shard with a progress bar; failed shards are reported."""
    eng = get_engine(engine, **engine_options) if isinstance(engine, str) else engine
    report = JobReport(job.name)
    try:
        storage.check_bucket(job.output_dir(), write=True)  # a wrong endpoint, bucket or key: fail now
        sweep_leftovers(job.output_dir())  # a killed run's temp files, staging folders, uncommitted objects
        job.engine = eng  # phase 1 of a global view may schedule shard jobs of its own on it
        try:
            job.prepare()
        finally:
            job.engine = None  # never pickled to workers
        shards = job.shards()
        with shard_progress(job.name, len(shards)) as advance:
            for outcome in eng.map_shards(job, shards, retries):
                report.outcomes.append(outcome)
                advance(outcome)
    finally:
        if isinstance(engine, str):
            eng.close()
    report.outcomes.sort(key=lambda o: o.shard)
    for o in report.failed:
        log.error("shard %s failed after %d attempts: %s", o.shard, o.attempts, o.error)
    log.info(report.summary())
    return report


def merged_stats(job: ShardJob) -> list[StageStats]:
    """Stats merged over the shards of ``job`` that have finished, read from disk."""
    out = job.output_dir()
    return merge(
        s for shard in job.shards() if stats_path(out, shard).exists() for s in load_shard_stats(out, shard)
    )
