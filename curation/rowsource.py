"""Sample tables read shard by shard from a pool, a parquet file, or a folder of parquet files.

Builders such as hardmatch and mixing only need ``uid``, ``caption`` and ``source`` per sample.
They accept a pool (img2dataset or DataComp metadata layout), a single parquet file of rows with
``uid`` and ``caption`` or ``text`` (a raw crawl table), or a folder of such files. A single file
is split into shards by its row groups, so every engine can spread it over workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.pool import SHARD_RE, Pool, PoolError, with_caption, with_uid

ROW_GROUP_RE = re.compile(r"^rg(\d+)$")


@dataclass(frozen=True)
class RowSource:
    """Where samples come from; picklable so shard jobs can carry it to workers."""

    path: Path
    kind: str  # "pool" | "file" | "folder"

    @classmethod
    def open(cls, path: str | Path) -> RowSource:
        path = Path(path)
        if path.is_file():
            if path.suffix != ".parquet":
                raise PoolError(f"{path}: expected a .parquet file or a pool directory")
            return cls(path, "file")
        if not path.is_dir():
            raise PoolError(f"input not found: {path}")
        if any(SHARD_RE.match(p.stem) for p in path.glob("*.parquet")):
            return cls(path, "pool")
        if any(path.glob("*.parquet")):
            return cls(path, "folder")
        raise PoolError(f"{path}: no parquet files; expected a pool or a folder of parquet tables")

    def shards(self) -> list[str]:
        if self.kind == "pool":
            return Pool(self.path).shard_ids()
        if self.kind == "folder":
            return sorted(p.stem for p in self.path.glob("*.parquet"))
        n = pq.ParquetFile(self.path).metadata.num_row_groups
        return [f"rg{i:05d}" for i in range(max(n, 1))]

    def read(self, shard: str) -> pa.Table:
        """The shard's samples with ``uid`` and ``caption`` (successful downloads only, in a pool)."""
        if self.kind == "pool":
            return Pool(self.path).read_samples(shard)
        if self.kind == "folder":
            table = pq.read_table(self.path / f"{shard}.parquet")
        else:
            m = ROW_GROUP_RE.match(shard)
            if m is None:
                raise PoolError(f"{shard!r} is not a row-group shard of {self.path}")
            pf = pq.ParquetFile(self.path)
            idx = int(m.group(1))
            table = pf.read_row_group(idx) if pf.metadata.num_row_groups else pf.schema_arrow.empty_table()
        if "status" in table.column_names:
            table = table.filter(pc.equal(table["status"], "success"))
        return with_uid(with_caption(table))

    def read_columns(self, shard: str, columns: list[str]) -> pa.Table:
        """Only ``columns`` of the shard's samples (caption is derived when asked for)."""
        table = self.read(shard)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise PoolError(f"{self.path} shard {shard}: no column(s) {missing}; has {table.column_names}")
        return table.select(columns)

    def has_column(self, name: str) -> bool:
        shards = self.shards()
        if self.kind == "pool":
            schema = pq.read_schema(Pool(self.path).parquet_path(shards[0]))
        elif self.kind == "folder":
            schema = pq.read_schema(self.path / f"{shards[0]}.parquet")
        else:
            schema = pq.read_schema(self.path)
        return name in schema.names
