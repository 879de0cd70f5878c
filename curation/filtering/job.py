"""The filter job: run configured filters over every shard of a pool and store their verdicts.

Each shard's samples (pool parquet rows that downloaded, with uid and caption) go through every
filter; all verdicts are written to ``POOL/attributes/<name>/NNNNN.parquet`` keyed by uid, and the
shard's funnel stats (each filter seeing only what earlier ones kept) to the runner's stats.
Filters that read other stages' attributes get them joined by uid (their side inputs); filters
that need the whole pool (:class:`curation.filtering.global_view.GlobalFilter`) run their phase 1 once in
``prepare`` and are joined to its per-shard lookups the same way.

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
from curation.core.io import atomic_write_parquet
from curation.core.pool import Pool
from curation.core.runner import ShardJob, done_shards, marker_path
from curation.core.stage import FILTERS, Filter, funnel_stats
from curation.core.stats import StageStats
from curation.engines import run_job
from curation.filtering.global_view import GlobalFilter, join_side_inputs, run_prepare

KEY_COLUMNS = ("uid", "source")


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

    def global_filters(self) -> list[GlobalFilter]:
        return [f for f in self.filters if isinstance(f, GlobalFilter)]

    def shards(self) -> list[str]:
        return self.pool.shard_ids()

    def output_dir(self) -> UPath:
        return self.pool.attributes_dir(self.name)

    def prepare(self) -> None:
        """Phase 1 of every global filter, unless every shard is already done.

        After new shards arrived (an appended crawl), phase 1 runs over all shards and the shards
        whose lookups changed are filtered again; the others keep their verdicts.
        """
        out = self.output_dir()
        if set(self.shards()) <= done_shards(out):  # one listing, also on object storage
            return
        engine = self.engine
        for f in self.global_filters():
            assert f.prepared_dir is not None
            f.schedule = (lambda job: run_job(job, engine)) if engine is not None else None
            try:
                changed = run_prepare(f, self.pool, f.prepared_dir)
            finally:
                f.schedule = None  # the filters are pickled to workers with the job
            for shard in changed:  # its global verdicts may differ: filter that shard again
                storage.remove(marker_path(out, shard))

    def setup(self) -> None:
        for f in self.filters:
            f.setup()

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        table = join_side_inputs(self.pool.read_samples(shard), shard, self.filters, self.pool)
        batches = []
        for batch in table.to_batches(max_chunksize=8192) or [pa.RecordBatch.from_pylist([], table.schema)]:
            for f in self.filters:
                batch = f.apply(batch)
            batches.append(batch)
        result = drop_repeated_columns(pa.Table.from_batches(batches))
        added = [c for c in result.column_names if c not in table.column_names]
        keys = [c for c in KEY_COLUMNS if c in result.column_names]
        atomic_write_parquet(staging / f"{shard}.parquet", result.select(keys + added))
        return funnel_stats(result, self.filters)
