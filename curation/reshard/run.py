"""``curate reshard``: write a subset's samples into fresh webdataset shards for training.

Output (what ``open_clip_train --train-data 'DIR/{00000..000NN}.tar'`` and our trainer read):
``DIR/NNNNN.tar`` with ``KEY.jpg`` (the pool's image bytes, not re-encoded; png/webp keep their
extension), ``KEY.txt``, ``KEY.json`` (the pool's metadata plus ``uid``, ``source``, ``pool_shard``,
``pool_key``, ``copy``) and, given a label table, ``KEY.cls``; ``DIR/sizes.json`` (shard -> count)
and ``DIR/stats.json`` (counts per source, drops by reason, the subset's manifest).

A uid listed k times in the subset is written k times under distinct keys (upsampling). Each
output shard is one job of the shard runner: written to a staging file, renamed into place, then
marked done (``DIR/_done/``), so a crash leaves only whole shards and a rerun writes just the rest.
The plan that fixes every shard's content lives in ``DIR/_plan/`` (see :mod:`curation.reshard.plan`).

The pool, the subset, the label table and ``DIR`` may each be a local path or a URL
(:mod:`curation.core.storage`); a shard's bytes are the same wherever they are read and written.
Member bytes of pool tars on object storage are read as merged byte ranges
(:mod:`curation.reshard.ranges`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.core import storage
from curation.core.io import atomic_write_json, read_json
from curation.core.pool import Pool
from curation.core.runner import ShardJob
from curation.core.stats import Counts, StageStats
from curation.core.subset import Subset
from curation.core.tarindex import TarReader
from curation.engines import Engine, JobReport, merged_stats, run_job
from curation.reshard.plan import (
    IMAGE_EXTS,
    MatchJob,
    ReshardConfig,
    build_plan,
    fingerprint,
    load_labels,
    write_plan,
)
from curation.reshard.ranges import Span, fetch_spans
from curation.reshard.tarwrite import TarSink

log = logging.getLogger(__name__)
TAR_MTIME = 946684800  # 2000-01-01: every member's mtime (the time a shard was written is in stats.json)


class ReshardError(ValueError):
    """A reshard that cannot start (no images in the pool, an output dir holding another reshard)."""


class WriteJob(ShardJob):
    """Writes output shard ``NNNNN.tar`` from its plan part."""

    name = "reshard-write"

    def __init__(self, pool: Pool, out: Path, n_shards: int, mtime: int, max_open: int = 64) -> None:
        self.pool = pool
        self.out = storage.location(out)
        self.n_shards = n_shards
        self.mtime = mtime
        self.max_open = max_open

    def shards(self) -> list[str]:
        return [f"{i:05d}" for i in range(self.n_shards)]

    def output_dir(self) -> Path:
        return self.out

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        plan = storage.read_parquet(plan_dir(self.out) / f"{shard}.parquet")
        stats = StageStats(self.name)
        written = 0
        columns = {name: plan[name].to_pylist() for name in SAMPLE_COLUMNS if name in plan.column_names}
        spans = contextlib.closing(self._spans(plan["pool_shard"].unique().to_pylist(), _rows(columns)))
        with spans as found, TarSink(staging / f"{shard}.tar", self.mtime) as sink:
            for row, span in found:
                for name, data in self._sample(span, row):
                    sink.add(name, data)
                    written += len(data)
        for source, n in Counter(columns["source"]).items():
            stats.by_source[source] = Counts(n, n)
        stats.total = Counts(plan.num_rows, plan.num_rows)
        stats.extra["bytes"] = written
        return [stats]

    def _spans(
        self, pool_shards: list[str], rows: Iterator[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], bytes | memoryview]]:
        """(row, the bytes of its sample's members in the pool tar) for every plan row, in order.

        The sample's members lie next to each other in the pool tar: one read covers them all. A
        local tar is read with ``pread``; tars on object storage with merged ranged requests.
        """
        tars = {s: self.pool.tar_path(s) for s in pool_shards}
        if storage.is_remote(self.pool.root):
            yield from fetch_spans(Span(row, tars[row["pool_shard"]], *_extent(row)) for row in rows)
            return
        paths = {s: str(tar) for s, tar in tars.items()}
        with TarReader(self.max_open) as reader:
            for row in rows:
                start, end = _extent(row)
                yield row, reader.read(paths[row["pool_shard"]], start, end - start)

    @staticmethod
    def _sample(span: bytes | memoryview, row: dict[str, Any]) -> list[tuple[str, bytes | memoryview]]:
        """The output members of one sample, in name order (as webdataset's TarWriter orders them).

        ``span`` holds the sample's members as they lie in the pool tar (see :meth:`_spans`): each
        member is a view into it. Only the JSON is rebuilt (it gains the sample's identity).
        """
        members = row["members"]
        start = _extent(row)[0]
        view = memoryview(span)
        files = {m["ext"]: view[m["offset"] - start : m["offset"] - start + m["size"]] for m in members}
        meta = json.loads(files["json"].tobytes()) if "json" in files else {}
        meta.update(
            key=row["key"],
            uid=row["uid"],
            source=row["source"],
            pool_shard=row["pool_shard"],
            pool_key=row["pool_key"],
            copy=row["copy"],
        )
        image_ext = next(e for e in IMAGE_EXTS if e in files)
        out: dict[str, bytes | memoryview] = {image_ext: files[image_ext]}
        if "txt" in files:
            out["txt"] = files["txt"]
        if row.get("label") is not None:
            meta["label"] = row["label"]
            out["cls"] = str(row["label"]).encode("ascii")
        out["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
        key = row["key"]
        return [(f"{key}.{ext}", out[ext]) for ext in sorted(out)]


SAMPLE_COLUMNS = ("key", "uid", "source", "pool_shard", "pool_key", "members", "copy", "label")


def _extent(row: dict[str, Any]) -> tuple[int, int]:
    """Where a sample's members lie in its pool tar: [first member's data, last member's end)."""
    members = row["members"]
    return min(m["offset"] for m in members), max(m["offset"] + m["size"] for m in members)


def _rows(columns: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Plan rows as dicts, from whole columns converted once (not a table-wide ``to_pylist``)."""
    names = list(columns)
    for values in zip(*columns.values(), strict=True):
        yield dict(zip(names, values, strict=True))


def plan_dir(out: Path) -> Path:
    return out / "_plan"


@dataclass
class ReshardResult:
    out: Path
    plan: dict[str, Any]
    reports: list[JobReport] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not any(r.failed for r in self.reports)


def run_reshard(
    pool_root: str | Path,
    subset_path: str | Path,
    out: str | Path,
    cfg: ReshardConfig | None = None,
    labels: str | Path | None = None,
    engine: Engine | str = "local",
    workers: int = 1,
    overwrite: bool = False,
) -> ReshardResult:
    """Plan (or reuse the plan of an interrupted run), write every missing shard, then sizes/stats."""
    cfg = cfg or ReshardConfig()
    pool, out = Pool(storage.location(pool_root)), storage.location(out)
    subset_path = storage.location(subset_path)
    labels_path = storage.location(labels) if labels else None
    if not pool.has_images():
        raise ReshardError(f"{pool.root} has no tar shards (a metadata-only pool?); download it first")
    if overwrite:
        clear_output(out)
    plan = _ensure_plan(pool, subset_path, out, cfg, labels_path, engine, workers)
    job = WriteJob(pool, out, plan["shards"], plan["mtime"], cfg.max_open_tars)
    report = run_job(job, engine, workers=workers)
    result = ReshardResult(out, plan, [report])
    if result.complete:
        _finish(out, job, plan, Subset.load(subset_path).manifest)
    return result


def _ensure_plan(
    pool: Pool,
    subset_path: Path,
    out: Path,
    cfg: ReshardConfig,
    labels: Path | None,
    engine: Engine | str,
    workers: int,
) -> dict[str, Any]:
    fp = fingerprint(pool, subset_path, labels, cfg)
    pdir = plan_dir(out)
    plan_file = pdir / "plan.json"
    if plan_file.exists():
        plan = read_json(plan_file)
        if plan["fingerprint"] == fp:
            log.info("reusing the reshard plan in %s (resuming)", pdir)
            return plan
        raise ReshardError(
            f"{out} holds a reshard of another subset or settings; use --overwrite or a new --out"
        )
    if storage.list_files(out, "*.tar"):
        raise ReshardError(f"{out} already has tar files but no plan; use --overwrite or a new --out")
    match = MatchJob(pool, subset_path, pdir / "match")
    report = run_job(match, engine, workers=workers)
    if report.failed:
        failed = ", ".join(f"{o.shard} ({o.error})" for o in report.failed[:5])
        raise ReshardError(f"reading {len(report.failed)} pool shard(s) failed: {failed}; rerun to resume")
    subset = Subset.load(subset_path)
    label_table = load_labels(labels, cfg.label_column) if labels else None
    files = [pdir / "match" / f"{s}.parquet" for s in match.shards()]
    tables, stats, summary = build_plan(files, subset, label_table, cfg)
    stats.check_balanced()
    write_plan(pdir, tables)
    plan = {
        "fingerprint": fp,
        "shards": len(tables),
        "created": time.time(),
        # member mtime in the tars: fixed (as reproducible builds do), so the same request gives
        # byte-identical shards wherever and whenever its subset was written
        "mtime": TAR_MTIME,
        "stats": stats.to_dict(),
        "match": [s.to_dict() for s in report.stats],
        **summary,
    }
    atomic_write_json(plan_file, plan)  # last: its presence means the plan is whole
    return plan


def _finish(out: Path, job: WriteJob, plan: dict[str, Any], subset_manifest: dict[str, Any]) -> None:
    """sizes.json from what each shard really wrote; stats.json with the funnel and the subset's manifest."""
    sizes = {}
    for shard in job.shards():
        stats = read_json(out / "_stats" / f"{shard}.json")["stages"][0]
        sizes[f"{shard}.tar"] = int(stats["kept"])
    written = merged_stats(job)
    plan_stats = StageStats.from_dict(plan["stats"])
    if sum(sizes.values()) != plan_stats.total.kept:
        raise ReshardError(f"wrote {sum(sizes.values())} samples but planned {plan_stats.total.kept}")
    atomic_write_json(out / "sizes.json", sizes)
    by_source = {s: c.kept for s, c in sorted(plan_stats.by_source.items()) if c.kept}
    atomic_write_json(
        out / "stats.json",
        {
            "total": sum(sizes.values()),
            "shards": len(sizes),
            "by_source": by_source,
            "bytes": int(written[0].extra.get("bytes", 0)) if written else 0,
            "funnel": plan_stats.to_dict(),
            "missing_in_pool": plan["missing_in_pool"],
            "duplicates_in_pool": plan["duplicates_in_pool"],
            "upsampled_uids": plan["upsampled_uids"],
            "settings": plan["fingerprint"],
            "subset_manifest": subset_manifest,
        },
    )


def clear_output(out: Path) -> None:
    """Remove a previous reshard's files (tars, plan, markers, stats, commit intents) from ``out``."""
    out = storage.location(out)
    for p in storage.list_files(out, "*.tar"):
        storage.remove(p)
    for name in ("_plan", "_done", "_stats", "_pending", ".staging"):
        storage.remove(out / name, recursive=True)
    for name in ("sizes.json", "stats.json"):
        storage.remove(out / name)
