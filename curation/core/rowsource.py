"""Sample tables read shard by shard from a pool, a parquet file, or a folder of parquet files.

Builders such as hardmatch and mixing only need ``uid``, ``caption`` and ``source`` per sample.
They accept a pool (img2dataset or DataComp metadata layout), a single parquet file of rows with
``uid`` and ``caption`` or ``text`` (a raw crawl table), or a folder of such files. A single file
is split into shards by its row groups, so every engine can spread it over workers. Each may be a
local path or a URL (:mod:`curation.core.storage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core import storage
from curation.core.pool import CAPTION_COLUMNS, SHARD_RE, Pool, PoolError, with_caption, with_uid

ROW_GROUP_RE = re.compile(r"^rg(\d+)$")


@dataclass(frozen=True)
class RowSource:
    """Where samples come from; picklable so shard jobs can carry it to workers."""

    path: Path
    kind: str  # "pool" | "file" | "folder"

    @classmethod
    def open(cls, path: str | Path) -> RowSource:
        path = storage.location(path)
        if storage.is_remote(path):
            storage.check_bucket(path)
        if path.is_file():
            if path.suffix != ".parquet":
                raise PoolError(f"{path}: expected a .parquet file or a pool directory")
            return cls(path, "file")
        if not path.is_dir():
            raise PoolError(f"input not found: {path}")
        tables = storage.list_files(path, "*.parquet")
        if any(SHARD_RE.match(p.stem) for p in tables):
            return cls(path, "pool")
        if tables:
            return cls(path, "folder")
        raise PoolError(f"{path}: no parquet files; expected a pool or a folder of parquet tables")

    def shards(self) -> list[str]:
        if self.kind == "pool":
            return Pool(self.path).shard_ids()
        if self.kind == "folder":
            return sorted(p.stem for p in storage.list_files(self.path, "*.parquet"))
        n = self._parquet_file().metadata.num_row_groups
        return [f"rg{i:05d}" for i in range(max(n, 1))]

    def _path(self, shard: str) -> Path:
        if self.kind == "pool":
            return Pool(self.path).parquet_path(shard)
        if self.kind == "folder":
            return self.path / f"{shard}.parquet"
        return self.path

    def read(self, shard: str, columns: list[str] | None = None, keep_null_uids: bool = False) -> pa.Table:
        """The shard's samples with ``uid`` and ``caption`` (successful downloads only, in a pool).

        With ``columns``, only what they need is read from disk (plus ``status``, and ``url`` and the
        caption when uids must be derived). ``keep_null_uids``: see :func:`with_uid`.
        """
        table = self._successes(shard, self._needed(shard, columns, derive_uid=False))
        derive = "uid" not in table.column_names or table["uid"].null_count > 0
        if columns is not None and derive:
            table = self._successes(shard, self._needed(shard, columns, derive_uid=True))
        if columns is None or "caption" in columns or derive:
            table = with_caption(table)
        return with_uid(table, keep_null=keep_null_uids)

    def _successes(self, shard: str, columns: list[str] | None) -> pa.Table:
        table = self._read_raw(shard, columns)
        if "status" in table.column_names:
            table = table.filter(pc.equal(table["status"], "success"))
        return table

    def _needed(self, shard: str, columns: list[str] | None, derive_uid: bool) -> list[str] | None:
        if columns is None:
            return None
        names = set(storage.read_parquet_schema(self._path(shard)).names)
        wanted = set(columns) | {"status"} | ({"url", *CAPTION_COLUMNS} if derive_uid else set())
        if "caption" in columns:
            wanted |= set(CAPTION_COLUMNS)
        return sorted(wanted & names)

    def _read_raw(self, shard: str, columns: list[str] | None) -> pa.Table:
        if self.kind != "file":
            return storage.read_parquet(self._path(shard), columns=columns)
        m = ROW_GROUP_RE.match(shard)
        if m is None:
            raise PoolError(f"{shard!r} is not a row-group shard of {self.path}")
        pf = self._parquet_file()
        if pf.metadata.num_row_groups == 0:
            schema = pf.schema_arrow
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        return pf.read_row_group(int(m.group(1)), columns=columns)

    def read_columns(self, shard: str, columns: list[str]) -> pa.Table:
        """Only ``columns`` of the shard's samples (caption is derived when asked for)."""
        table = self.read(shard, columns)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise PoolError(f"{self.path} shard {shard}: no column(s) {missing}; has {table.column_names}")
        return table.select(columns)

    def has_column(self, name: str) -> bool:
        return name in storage.read_parquet_schema(self._path(self.shards()[0])).names

    def _parquet_file(self) -> pq.ParquetFile:
        if not storage.is_remote(self.path):
            return pq.ParquetFile(self.path)
        with storage.storage_errors(self.path, "read"):
            return pq.ParquetFile(self.path.path, filesystem=self.path.fs)
