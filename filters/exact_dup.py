"""Exact duplicates: samples whose image bytes have the same sha256 (img2dataset's ``sha256`` column).

A global filter (see :mod:`curation.filtering.global_view`). Phase 1 streams ``uid, sha256`` (and an optional
score) of every shard into one parquet file and lets DuckDB group it out of core: per hash, the
representative is the sample with the best ``prefer`` score, ties and the default going to the
smallest uid, so the choice is the same on every run and engine. Only members of groups of two or
more are written to the per-shard lookups. Phase 2 drops every member but the representative with
reason ``exact_duplicate`` and records ``<name>_of`` (the representative's uid) and
``<name>_group_size``; a sample without a hash is dropped as ``missing_hash``.

Like every verdict, this one is computed over the whole pool, independent of the other filters, so
a threshold sweep elsewhere never changes it; a representative that another filter drops takes its
group with it unless ``prefer`` ranks the samples that matter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core.pool import Pool
from curation.core.stage import ConfiguredFilter, Verdict, filter_kind
from curation.filtering.global_view import (
    GlobalFilter,
    ScoreRef,
    gather_shards,
    read_aligned,
    write_shard_lookups,
)

HASH_COLUMN = "sha256"
LOOKUP_SCHEMA = pa.schema([("uid", pa.string()), ("rep", pa.string()), ("group_size", pa.int64())])


class ExactDupConfig(ConfiguredFilter):
    hash_column: str = HASH_COLUMN  # img2dataset: compute_hash="sha256"
    prefer: ScoreRef | None = None  # keep the highest score per group (default: the smallest uid)
    memory_limit: str = "2GB"  # DuckDB spills to disk beyond this


GROUP_SQL = """
SELECT shard, uid,
       first_value(uid) OVER w AS rep,
       count(*) OVER (PARTITION BY hash) AS group_size
FROM read_parquet($path)
WHERE hash IS NOT NULL AND hash <> ''
WINDOW w AS (PARTITION BY hash ORDER BY score DESC NULLS LAST, uid ASC)
QUALIFY group_size > 1
ORDER BY shard, uid
"""


@filter_kind("exact_dup", ExactDupConfig)
class ExactDupFilter(GlobalFilter):
    lookup_columns = ("rep", "group_size")

    def __init__(self, cfg: ExactDupConfig) -> None:
        super().__init__(cfg)
        self.cfg: ExactDupConfig = cfg

    def prepare(self, pool: Pool, out: Path) -> None:
        with tempfile.TemporaryDirectory(dir=out, prefix=".gather-") as tmp:
            gathered = Path(tmp) / "hashes.parquet"
            self._gather(pool, gathered)
            con = duckdb.connect(config={"memory_limit": self.cfg.memory_limit, "temp_directory": tmp})
            try:
                reader = con.sql(GROUP_SQL, params={"path": str(gathered)}).to_arrow_reader(65536)
                write_shard_lookups(out, pool.shard_ids(), reader, LOOKUP_SCHEMA)
            finally:
                con.close()

    def _gather(self, pool: Pool, path: Path) -> None:
        """One parquet of ``shard, uid, hash, score`` over all shards, written one shard at a time."""
        schema = pa.schema(
            [("shard", pa.string()), ("uid", pa.string()), ("hash", pa.string()), ("score", pa.float64())]
        )

        def read(shard: str) -> pa.Table:
            samples = pool.read_samples(shard)
            if self.cfg.hash_column not in samples.column_names:
                raise ValueError(
                    f"{pool.parquet_path(shard)} has no {self.cfg.hash_column!r} column; exact dedup needs "
                    "img2dataset's compute_hash='sha256' (or set hash_column)"
                )
            n = samples.num_rows
            prefer = self.cfg.prefer
            score = pa.nulls(n, pa.float64())
            if prefer is not None:
                score = pc.cast(read_aligned(pool, shard, prefer, samples["uid"]), pa.float64())
                score = pc.if_else(pc.is_nan(score), pa.scalar(None, pa.float64()), score)  # NaN: last
            columns = [pa.repeat(shard, n), samples["uid"], samples[self.cfg.hash_column], score]
            return pa.Table.from_arrays(columns, names=schema.names).cast(schema)

        with pq.ParquetWriter(path, schema) as writer:
            for _, _, table in gather_shards(pool, read, f"{self.name}: hashes"):
                writer.write_table(table)

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        uid = batch.column("uid")
        rep = batch.column(self.input_column("rep"))
        duplicate = pc.fill_null(pc.not_equal(rep, uid), False).to_numpy(zero_copy_only=False)
        return Verdict.from_rules(
            batch.num_rows, [("missing_hash", self._missing_hash(batch)), ("exact_duplicate", duplicate)]
        )

    def _missing_hash(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.cfg.hash_column not in batch.schema.names:
            return np.ones(batch.num_rows, dtype=bool)
        h = batch.column(self.cfg.hash_column)
        return pc.fill_null(pc.equal(pc.utf8_length(pc.cast(h, pa.string())), 0), True).to_numpy(
            zero_copy_only=False
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        uid, rep = batch.column("uid"), batch.column(self.input_column("rep"))
        dup_of = pc.if_else(pc.fill_null(pc.not_equal(rep, uid), False), rep, pa.scalar(None, pa.string()))
        size = pc.fill_null(batch.column(self.input_column("group_size")), 1)
        size = pc.if_else(pa.array(self._missing_hash(batch)), pa.scalar(None, pa.int64()), size)
        return {f"{self.name}_of": dup_of, f"{self.name}_group_size": size}
