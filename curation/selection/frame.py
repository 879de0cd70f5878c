"""The relation a selection is evaluated on: one row per pool sample, the columns the steps need.

Selection steps never load a column into Python; they add SQL columns (a multiplicity and a drop
reason per step) to a DuckDB relation over parquet files and ask DuckDB for counts and cuts. The
relation is read straight from the pool's parquet files when every column the steps need is a pool
column and every row has a uid (DataComp metadata pools, or img2dataset pools with our ``uid``
column). Otherwise :mod:`curation.selection.gather` first joins each pool shard with its attribute tables
(``attributes/<stage>/NNNNN.parquet``, same shard id) into one narrow parquet per shard, so the
global steps never join billion-row tables.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.pool import CAPTION_COLUMNS
from curation.core.subset import Subset
from curation.core.uidvec import uids_to_hex_array

log = logging.getLogger(__name__)

FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
NUMERIC_TYPES = FLOAT_TYPES | {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
}  # fmt: skip


class SelectionError(ValueError):
    """A selection that cannot run on this pool (a missing column, stage or file)."""


class DuckDBConfig(ConfigModel):
    """DuckDB resources: the memory cap is what keeps a billion-row selection out of core."""

    memory_limit: str = "1GB"
    threads: int | None = None  # None: one per core
    temp_directory: str | None = None  # None: the selection's work directory


@dataclass(frozen=True)
class ColumnRef:
    """A column by where it lives: a pool parquet column (``stage`` None) or an attribute table's."""

    stage: str | None
    column: str

    @classmethod
    def parse(cls, value: Any) -> ColumnRef:
        """``"col"`` (pool column), ``"stage:col"``, or ``{stage: ..., column: ...}``."""
        if isinstance(value, ColumnRef):
            return value
        if isinstance(value, str):
            stage, sep, column = value.rpartition(":")
            return cls(stage if sep else None, column)
        if isinstance(value, dict) and set(value) <= {"stage", "column"} and "column" in value:
            return cls(value.get("stage"), str(value["column"]))
        raise ValueError(
            f"column reference must be 'column', 'stage:column' or {{stage, column}}; got {value!r}"
        )

    def label(self) -> str:
        return f"{self.stage}:{self.column}" if self.stage else self.column


def ordered(refs: list[ColumnRef]) -> list[ColumnRef]:
    """Distinct refs in a fixed order (pool columns first), so aliases c0, c1, ... are reproducible."""
    return sorted(set(refs), key=lambda r: (r.stage is not None, r.stage or "", r.column))


def connect(cfg: DuckDBConfig, work_dir: Path) -> duckdb.DuckDBPyConnection:
    settings: dict[str, Any] = {
        "memory_limit": cfg.memory_limit,
        "temp_directory": cfg.temp_directory or str(work_dir / "duckdb_tmp"),
        "preserve_insertion_order": False,
        # DuckDB folds isnan(x) to FALSE when parquet min/max statistics (which skip NaN) say the column
        # has no NaN, so NaN scores would rank above everything (DuckDB orders NaN highest).
        "disabled_optimizers": "statistics_propagation",
    }
    if cfg.threads:
        settings["threads"] = cfg.threads
    return duckdb.connect(config=settings)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parquet_columns(con: duckdb.DuckDBPyConnection, files: list[str]) -> dict[str, str]:
    """Column name -> DuckDB type over the union of ``files``' schemas (footers only)."""
    rows = con.execute("DESCRIBE SELECT * FROM read_parquet(?, union_by_name=true)", [files]).fetchall()
    return {r[0]: r[1] for r in rows}


def uid_column_complete(con: duckdb.DuckDBPyConnection, files: list[str]) -> bool:
    """Every file has a ``uid`` column without nulls (from parquet statistics when they exist)."""
    per_file = con.execute(
        "SELECT file_name, sum(stats_null_count), sum(CASE WHEN stats_null_count IS NULL THEN 1 ELSE 0 END) "
        "FROM parquet_metadata(?) WHERE path_in_schema = 'uid' GROUP BY file_name",
        [files],
    ).fetchall()
    if len(per_file) < len(files):
        return False
    if all(unknown == 0 for _, _, unknown in per_file):
        return all(nulls == 0 for _, nulls, _ in per_file)
    n = con.execute("SELECT count(*) FROM read_parquet(?) WHERE uid IS NULL", [files]).fetchone()
    return n is not None and n[0] == 0


def resolve_pool_column(ref: ColumnRef, available: dict[str, str]) -> str:
    """The pool parquet column for ``ref``; ``caption`` means whichever caption column the pool has."""
    if ref.column in available:
        return ref.column
    if ref.column == "caption":
        for name in CAPTION_COLUMNS:
            if name in available:
                return name
    raise SelectionError(
        f"pool has no column {ref.column!r} (columns: {', '.join(sorted(available))}); "
        "for an attribute computed by a stage use {stage: NAME, column: COL}"
    )


@dataclass
class Frame:
    """A DuckDB relation plus the named columns the compiled steps have added to it."""

    con: duckdb.DuckDBPyConnection
    base: str
    aliases: dict[ColumnRef, str]
    types: dict[str, str]
    layers: list[tuple[str, str]] = field(default_factory=list)
    subset_aliases: dict[str, str] = field(default_factory=dict)
    rows_estimate: int = 0  # parquet rows under the frame (an upper bound of its rows), for sampling
    temp_tables: list[str] = field(default_factory=list)
    scans: int = 0

    def col(self, ref: ColumnRef) -> str:
        return self.aliases[ref]

    def score_col(self, ref: ColumnRef) -> str:
        """The alias of a column that steps rank or threshold; a clear error unless it is numeric."""
        alias = self.aliases[ref]
        kind = self.types[alias].upper()
        if kind not in NUMERIC_TYPES and not kind.startswith("DECIMAL"):
            raise SelectionError(f"score column {ref.label()!r} holds {kind}, not numbers")
        return alias

    def type_of(self, alias: str) -> str:
        return self.types[alias]

    def is_float(self, alias: str) -> bool:
        return self.types[alias].upper() in FLOAT_TYPES

    def valid(self, alias: str) -> str:
        """SQL: the column holds a usable value (not NULL, not NaN); DuckDB sorts NaN above +inf."""
        return (
            f"({alias} IS NOT NULL AND NOT isnan({alias}))"
            if self.is_float(alias)
            else f"({alias} IS NOT NULL)"
        )

    def add(self, expr: str, prefix: str = "x") -> str:
        """Add a computed column on top of the current relation; returns its name."""
        name = f"_{prefix}{len(self.layers)}"
        self.layers.append((name, expr))
        return name

    def sql(self) -> str:
        sql = self.base
        for name, expr in self.layers:
            sql = f"SELECT *, {expr} AS {name} FROM ({sql})"
        return sql

    def relation(self, where: str, select: str = "*") -> str:
        return f"SELECT {select} FROM ({self.sql()}) WHERE {where}"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        start = self._start(sql)
        rows = self.con.execute(sql).fetchall()
        log.debug("duckdb: %.2f s", time.perf_counter() - start)
        return rows

    def arrow(self, sql: str) -> pa.Table:
        start = self._start(sql)
        rel = self.con.sql(sql)
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()  # duckdb 2 / 1
        log.debug("duckdb: %.2f s", time.perf_counter() - start)
        return table

    def _start(self, sql: str) -> float:
        self.scans += 1
        log.debug("duckdb scan %d: %s", self.scans, sql[-600:])
        return time.perf_counter()

    def stream(self, sql: str, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Arrow record batches of a query, without materialising the whole result."""
        self._start(sql)
        rel = self.con.sql(sql)
        reader = rel.to_arrow_reader if hasattr(rel, "to_arrow_reader") else rel.fetch_arrow_reader  # 2 / 1
        yield from reader(batch_size)

    def temp_table(self, sql: str, prefix: str) -> str:
        """Materialise a (small) query result as a temporary table; returns its name."""
        name = f"_{prefix}{len(self.temp_tables)}"
        start = self._start(sql)
        self.con.execute(f"CREATE TEMP TABLE {name} AS {sql}")
        log.debug("duckdb: %.2f s", time.perf_counter() - start)
        self.temp_tables.append(name)
        return name

    def subset_col(self, path: str) -> str:
        return self.subset_aliases[path]


def pool_frame_columns(refs: Iterable[ColumnRef]) -> set[str]:
    """Pool parquet columns a frame read straight from the pool may use (see :func:`build_frame`)."""
    names = {"uid", "source", "status"}
    for ref in refs:
        names |= {ref.column, *CAPTION_COLUMNS} if ref.column == "caption" else {ref.column}
    return names


def local_parquet(files: Iterable[Path], dest: Path, columns: set[str] | None = None) -> list[str]:
    """Names of local parquet files for DuckDB to scan (it cannot read object storage here).

    A local file is used where it is. A remote one is copied to ``dest`` under its own name (so
    the files sort as before): only the ``columns`` it has (all if None), every row in its order,
    one row group at a time, so row numbers, row counts and null counts are those of the original.
    """
    out = []
    for f in map(storage.location, files):
        if not storage.is_remote(f):
            out.append(str(f))
            continue
        dest.mkdir(parents=True, exist_ok=True)
        local = dest / f.name
        if columns is None:
            with storage.local_copy(f) as tmp:
                shutil.move(tmp, local)
        else:
            _copy_columns(f, local, columns)
        out.append(str(local))
    return out


def _copy_columns(src: Any, dst: Path, columns: set[str]) -> None:
    with storage.storage_errors(src, "read"):
        pf = pq.ParquetFile(src.path, filesystem=src.fs)
        names = [n for n in pf.schema_arrow.names if n in columns] or pf.schema_arrow.names[:1]
        with pq.ParquetWriter(dst, pf.schema_arrow.empty_table().select(names).schema) as writer:
            for i in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(i, columns=names))


def build_frame(
    con: duckdb.DuckDBPyConnection,
    refs: list[ColumnRef],
    subsets: list[str],
    files: list[str],
    gathered: bool,
) -> Frame:
    """The base relation over local parquet ``files``: the pool's (``gathered`` False) or gathered shards."""
    refs = ordered(refs)
    aliases = {ref: f"c{i}" for i, ref in enumerate(refs)}
    if not gathered:
        available = parquet_columns(con, files)
        cols = ["uid AS uid", _source_expr(available), "_file", "file_row_number"]
        for ref, alias in aliases.items():
            cols.append(f"{quote(resolve_pool_column(ref, available))} AS {alias}")
        where = " WHERE status = 'success'" if "status" in available else ""
        base = f"SELECT {', '.join(cols)} FROM {_scan(files)}{where}"
    else:
        cols = ["uid", "source", "_file", "file_row_number", *aliases.values()]
        base = f"SELECT {', '.join(cols)} FROM {_scan(files)}"
    subset_aliases = {}
    for i, path in enumerate(sorted(set(subsets))):
        name, alias = f"_subset{i}", f"s{i}"
        con.register(name, subset_counts_table(Subset.load(path)))
        base = (
            f"SELECT b.*, coalesce({name}.n, 0) AS {alias} FROM ({base}) b "
            f"LEFT JOIN {name} ON {name}.uid = lower(b.uid)"
        )
        subset_aliases[path] = alias
    rows = con.execute("SELECT sum(num_rows) FROM parquet_file_metadata(?)", [files]).fetchone()
    frame = Frame(con, base, aliases, {}, subset_aliases=subset_aliases, rows_estimate=int(rows[0] or 0))
    frame.types = {r[0]: r[1] for r in con.execute(f"DESCRIBE {base}").fetchall()}
    return frame


def subset_counts_table(subset: Subset) -> pa.Table:
    uids, counts = subset.counts()
    return pa.table({"uid": uids_to_hex_array(uids), "n": pa.array(counts, pa.int64())})


def _source_expr(available: dict[str, str]) -> str:
    if "source" in available:
        return "coalesce(CAST(source AS VARCHAR), 'unknown') AS source"
    return "'unknown' AS source"


def _scan(files: list[str]) -> str:
    """read_parquet with each row's identity (``ROW_ID`` in ranking.py): its file and row number."""
    return f"read_parquet({_file_list(files)}, union_by_name=true, filename='_file', file_row_number=true)"


def _file_list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
