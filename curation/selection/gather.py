"""Gather phase of a selection: one narrow parquet per pool shard with exactly the needed columns.

Attribute tables are written per shard with the pool's shard ids, so joining them with the pool is
a per-shard join of a few thousand rows, not a global join of billions. Each gathered shard holds
``uid``, ``source`` and the steps' columns under their aliases (``c0``, ``c1``, ...); a sample with
no row in an attribute table gets NULL there, which the steps count as a missing value. The work
runs through the shard runner, so it is parallel on any engine and resumes after a crash. The
pool, its attribute tables and the work dir may each be a local path or a URL.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.io import atomic_write_json, atomic_write_parquet, read_json
from curation.core.pool import Pool
from curation.core.runner import ShardJob
from curation.core.stats import Counts, StageStats
from curation.selection.frame import ColumnRef, SelectionError, ordered, resolve_pool_column


class GatherJob(ShardJob):
    """Per pool shard: samples (uid, source) left-joined with the attribute columns the steps need."""

    name = "select-gather"

    def __init__(self, pool: Pool, refs: list[ColumnRef], work_dir: Path) -> None:
        self.pool = pool
        self.refs = ordered(refs)
        self.aliases = {ref: f"c{i}" for i, ref in enumerate(self.refs)}
        self.work_dir = storage.location(work_dir)
        self.stage_shards = {stage: self._stage_tables(stage) for stage in self._stages()}
        self.stage_types = {stage: self._stage_schema(stage) for stage in self._stages()}

    def _stages(self) -> list[str]:
        return sorted({r.stage for r in self.refs if r.stage is not None})

    def _stage_tables(self, stage: str) -> dict[str, Path]:
        """A stage's attribute table per shard id, from one listing (two with completion markers:
        where the stage has them, a table without its marker is an interrupted commit, not data)."""
        where = self.pool.attributes_dir(stage)
        tables = {p.stem: p for p in storage.list_files(where, "*.parquet")}
        done = storage.list_files(where / "_done", "*.done")
        if done:
            committed = {p.name.removesuffix(".done") for p in done}
            tables = {shard: p for shard, p in tables.items() if shard in committed}
        return tables

    def _stage_schema(self, stage: str) -> pa.Schema:
        files = sorted(self.stage_shards[stage].values(), key=str)
        if not files:
            raise SelectionError(
                f"{storage.url(self.pool.root)}: no attribute tables for stage {stage!r}; run it first"
            )
        schema = storage.read_parquet_schema(files[0])
        for ref in self.refs:
            if ref.stage == stage and ref.column not in schema.names:
                raise SelectionError(
                    f"attribute stage {stage!r} has no column {ref.column!r} (has {', '.join(schema.names)})"
                )
        return schema

    def prepare(self) -> None:
        """Reuse a previous (interrupted) gather only if it was for the same pool and columns."""
        root = self.pool.root
        pool = storage.url(root) if storage.is_remote(root) else str(root.resolve())
        fingerprint = {"pool": pool, "columns": [r.label() for r in self.refs]}
        marker = self.work_dir / "gather.json"
        if marker.exists() and read_json(marker) != fingerprint:
            storage.remove(self.work_dir, recursive=True)
        atomic_write_json(marker, fingerprint)

    def shards(self) -> list[str]:
        return self.pool.shard_ids()

    def output_dir(self) -> Path:
        return self.work_dir

    def files(self) -> list[Path]:
        return [self.work_dir / f"{s}.parquet" for s in self.shards()]

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        samples = self.pool.read_samples(shard)
        n = samples.num_rows
        source = (
            pc.fill_null(pc.cast(samples["source"], pa.string()), "unknown")
            if "source" in samples.column_names
            else pa.array(["unknown"] * n, pa.string())
        )
        table = pa.table({"uid": samples["uid"], "source": source})
        available = {c: "" for c in samples.column_names}
        for ref, alias in self.aliases.items():
            if ref.stage is None:
                table = table.append_column(alias, samples[resolve_pool_column(ref, available)])
        missing: Counter[str] = Counter()
        for stage in self._stages():
            table, absent = self._join_stage(table, shard, stage)
            missing[f"missing_rows_{stage}"] += absent
        table = table.select(["uid", "source", *self.aliases.values()])
        atomic_write_parquet(staging / f"{shard}.parquet", table)
        stats = StageStats(self.name, total=Counts(n, n), extra=missing)
        for src, count in _value_counts(source).items():
            stats.by_source[src] = Counts(count, count)
        return [stats]

    def _join_stage(self, table: pa.Table, shard: str, stage: str) -> tuple[pa.Table, int]:
        cols = {ref.column: alias for ref, alias in self.aliases.items() if ref.stage == stage}
        path = self.stage_shards[stage].get(shard)
        schema = self.stage_types[stage]
        if path is not None:
            attr = storage.read_parquet(path, columns=["uid", *cols])
            attr = attr.set_column(0, "uid", pc.utf8_lower(attr["uid"]))
        else:
            attr = pa.table(
                {"uid": pa.array([], pa.string())} | {c: pa.array([], schema.field(c).type) for c in cols}
            )
        attr = attr.rename_columns(["uid", *cols.values()])
        if pc.count_distinct(attr["uid"]).as_py() < attr.num_rows:
            attr = _first_per_uid(attr)
        joined = table.join(attr, keys="uid", join_type="left outer", use_threads=False)
        present = pc.is_in(table["uid"], value_set=attr["uid"])
        absent = int(pc.sum(pc.invert(present)).as_py() or 0)
        return joined, absent


def _first_per_uid(attr: pa.Table) -> pa.Table:
    """One row per uid (the first), so a duplicated attribute row cannot duplicate a sample."""
    value_cols = [c for c in attr.column_names if c != "uid"]
    grouped = attr.group_by("uid", use_threads=False).aggregate([(c, "first") for c in value_cols])
    return grouped.rename_columns([*(f"{c}" for c in value_cols), "uid"]).select(["uid", *value_cols])


def _value_counts(arr: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(arr)
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}
