"""The filter job: run configured filters over every shard of a pool and store their verdicts.

Each shard's samples (pool parquet rows that downloaded, with uid and caption) go through every
filter; all verdicts are written to ``POOL/attributes/<name>/NNNNN.parquet`` keyed by uid, and the
shard's funnel stats (each filter seeing only what earlier ones kept) to the runner's stats.
Filters that read other stages' attributes get them joined by uid (their side inputs); filters
that need the whole pool (:class:`curation.filtering.global_view.GlobalFilter`) run their phase 1 once in
``prepare`` and are joined to its per-shard lookups the same way.

When the pool grows (an appended crawl), phase 1 runs again over the union and a finished shard
whose lookups changed is *refreshed*, not filtered again: only the global filters' columns are
recomputed, the per-shard filters' columns are kept from its committed table (see
:meth:`FilterJob.prepare`). The table and stats come out as a full run would write them.

The pool may be a URL (:mod:`curation.core.storage`): side inputs and lookups are read through
storage, the verdicts are committed by the runner, and phase 1's lookups are uploaded beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from upath import UPath

from curation.core import storage
from curation.core.config import ConfigError, ConfigModel, build
from curation.core.io import atomic_write_json, atomic_write_parquet
from curation.core.pool import Pool
from curation.core.runner import ShardJob, done_shards, marker_path
from curation.core.stage import FILTERS, Filter, funnel_stats
from curation.core.stats import StageStats
from curation.engines import run_job
from curation.filtering.global_view import GlobalFilter, join_side_inputs, run_prepare

KEY_COLUMNS = ("uid", "source")
BATCH_ROWS = 8192
REFRESH_DIR = "_refresh"  # a record per finished shard whose global verdicts must be recomputed


def refresh_path(out: UPath, shard: str) -> UPath:
    return out / REFRESH_DIR / f"{shard}.json"


class FilterJobConfig(ConfigModel):
    """A filter config file: the attribute folder's name and the filters, in order."""

    name: str = "filters"
    filters: list[dict[str, Any]]


def build_filter(spec: dict[str, Any]) -> Filter:
    """A filter from its config block ``{kind: ..., name: ..., <settings>}``."""
    kind = spec.get("kind")
    cls = FILTERS.get(str(kind), f"filters ({spec.get('name') or kind})")
    if getattr(cls, "kind", None) != kind:
        raise ConfigError(f"filter kind {kind!r}: its class says kind {getattr(cls, 'kind', None)!r}")
    return cls(build(cls.config_cls, spec, source=f"filter {spec.get('name') or kind}"))


def drop_repeated_columns(table: pa.Table) -> pa.Table:
    """Keep one copy of an attribute two filters both wrote (the same kind run with two thresholds
    writes the same ``lang`` or ``image_aspect``); differing copies are a configuration error."""
    keep: list[int] = []
    first: dict[str, int] = {}
    for i, name in enumerate(table.column_names):
        if name not in first:
            first[name] = i
            keep.append(i)
        elif not table.column(i).equals(table.column(first[name])):
            raise ConfigError(f"two filters write different values into column {name!r}; rename one")
    return table.select(keep)


class FilterJob(ShardJob):
    """Verdicts of ``filter_specs`` for every sample of ``pool``."""

    def __init__(
        self, pool: str | Path | UPath, filter_specs: list[dict[str, Any]], name: str = "filters"
    ) -> None:
        self.pool = Pool(storage.location(pool))
        self.name = name
        self.filter_specs = filter_specs
        self.filters = [build_filter(s) for s in filter_specs]
        names = [f.name for f in self.filters]
        if len(set(names)) != len(names):
            raise ConfigError(f"filters: names must be unique, got {names}")
        for f in self.global_filters():
            f.prepared_dir = self.output_dir() / "_prepared" / f.name
        self.refresh: set[str] = set()  # shards whose global verdicts only are recomputed (prepare)

    def global_filters(self) -> list[GlobalFilter]:
        return [f for f in self.filters if isinstance(f, GlobalFilter)]

    def shards(self) -> list[str]:
        return self.pool.shard_ids()

    def output_dir(self) -> UPath:
        return self.pool.attributes_dir(self.name)

    def prepare(self) -> None:
        """Phase 1 of every global filter, unless every shard is already done.

        After new shards arrived (an appended crawl), phase 1 runs over all shards. A finished shard
        whose lookups changed gets a refresh record (``_refresh/NNNNN.json``) and loses its marker,
        both before the new lookups are published, so a kill at any point leaves it to be done
        again; :meth:`run_shard` then recomputes only its global filters' columns. The other
        finished shards keep their verdicts.
        """
        out = self.output_dir()
        done = done_shards(out)  # one listing, also on object storage
        self.refresh = self._pending_refreshes(out, done) if self.global_filters() else set()
        if set(self.shards()) <= done:
            return
        engine = self.engine
        for f in self.global_filters():
            assert f.prepared_dir is not None
            f.schedule = (lambda job: run_job(job, engine)) if engine is not None else None
            try:
                run_prepare(f, self.pool, f.prepared_dir, lambda shards: self._mark_for_refresh(shards, done))
            finally:
                f.schedule = None  # the filters are pickled to workers with the job

    def _pending_refreshes(self, out: UPath, done: set[str]) -> set[str]:
        """Shards with a refresh record and no marker; records of finished shards are deleted."""
        pending = set()
        for record in storage.list_files(out / REFRESH_DIR, "*.json"):
            shard = record.name.removesuffix(".json")
            if shard in done:  # refreshed (or filtered in full) since
                storage.remove(record)
            else:
                pending.add(shard)
        return pending

    def _mark_for_refresh(self, changed: list[str], done: set[str]) -> None:
        """A finished shard whose lookups changed: its record first, then its marker goes."""
        for shard in changed:
            if shard in done and shard not in self.refresh:
                out = self.output_dir()
                atomic_write_json(refresh_path(out, shard), {"shard": shard, "why": "dedup lookups changed"})
                storage.remove(marker_path(out, shard))
                self.refresh.add(shard)

    def setup(self) -> None:
        for f in self.filters:
            f.setup()

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        samples = self.pool.read_samples(shard)
        result = self._refreshed(shard, samples) if shard in self.refresh else None
        if result is None:
            table = join_side_inputs(samples, shard, self.filters, self.pool)
            result = self._verdicts(table)
        atomic_write_parquet(staging / f"{shard}.parquet", result)
        return funnel_stats(result, self.filters)

    def _verdicts(self, table: pa.Table, kept: pa.Table | None = None) -> pa.Table:
        """``table``'s key columns and the verdict columns of the filters, applied in order.

        With ``kept`` (a committed verdict table of the same rows), the per-shard filters are not
        run: their columns are taken from ``kept`` (:meth:`_blocks` says which are whose)."""
        blocks = self._blocks(kept.column_names) if kept is not None else None
        batches, offset = [], 0
        empty = [pa.RecordBatch.from_pylist([], table.schema)]
        for batch in table.to_batches(max_chunksize=BATCH_ROWS) or empty:
            for i, f in enumerate(self.filters):
                if blocks is None or isinstance(f, GlobalFilter):
                    batch = f.apply(batch)
                else:
                    assert kept is not None
                    for name in blocks[i]:
                        column = kept[name].slice(offset, batch.num_rows).combine_chunks()
                        batch = batch.append_column(name, column)
            offset += batch.num_rows
            batches.append(batch)
        result = drop_repeated_columns(pa.Table.from_batches(batches))
        added = [c for c in result.column_names if c not in table.column_names]
        keys = [c for c in KEY_COLUMNS if c in result.column_names]
        return result.select(keys + added)

    def _blocks(self, columns: list[str]) -> list[list[str]] | None:
        """Each filter's columns in a verdict table (extras, ``_keep``, ``_reason``, in filter order),
        or None when the table was not written by these filters."""
        keys = [c for c in KEY_COLUMNS if c in columns]
        if columns[: len(keys)] != keys:
            return None
        start, blocks = len(keys), []
        for f in self.filters:
            try:
                end = columns.index(f.reason_column, start)
            except ValueError:
                return None
            if end == start or columns[end - 1] != f.keep_column:
                return None
            blocks.append(columns[start : end + 1])
            start = end + 1
        return blocks if start == len(columns) else None

    def _refreshed(self, shard: str, samples: pa.Table) -> pa.Table | None:
        """The shard's committed verdicts with the global filters' columns recomputed from the new
        lookups, or None when there is no committed table of these filters and rows (then the
        shard is filtered in full)."""
        try:
            kept = storage.read_parquet(self.output_dir() / f"{shard}.parquet")
        except FileNotFoundError:
            return None
        if (
            "uid" not in kept.column_names
            or self._blocks(kept.column_names) is None
            or not kept["uid"].equals(samples["uid"])
        ):
            return None
        table = join_side_inputs(samples, shard, self.global_filters(), self.pool)
        result = self._verdicts(table, kept)
        return result if result.schema.equals(kept.schema) else None
