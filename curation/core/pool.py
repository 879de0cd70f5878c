"""Reading pools in img2dataset's layout (and DataComp metadata pools, which have no tars).

A pool directory (a local path or a URL: :mod:`curation.core.storage`) holds, per shard,
``NNNNN.parquet`` (one row per input url, successes and failures), ``NNNNN.tar`` (webdataset samples
``KEY.jpg/.txt/.json``) and ``NNNNN_stats.json``. Attribute tables computed by stages live under
``attributes/<stage>/NNNNN.parquet``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.tarindex import TarDamage, iter_groups
from curation.core.uid import compute_uids

SHARD_RE = re.compile(r"^\d+$")
CAPTION_COLUMNS = ("caption", "text")  # img2dataset writes "caption"; DataComp metadata has "text"


class PoolError(ValueError):
    """A pool directory that is not in the expected layout."""


@dataclass
class TarSample:
    """One webdataset sample: its key and its member files by extension (``jpg``, ``txt``, ...)."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)

    def meta(self) -> dict:
        raw = self.files.get("json")
        return json.loads(raw) if raw else {}


@dataclass(frozen=True)
class Pool:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", storage.location(self.root))
        if storage.is_remote(self.root):
            storage.check_bucket(self.root)
            if not storage.list_files(self.root, "*.parquet"):
                raise PoolError(f"pool not found (no NNNNN.parquet under it): {self.root}")
        elif not self.root.is_dir():
            raise PoolError(f"pool directory not found: {self.root}")

    def shard_ids(self) -> list[str]:
        """Shard ids (``00000`` ...) that have a parquet file, sorted."""
        ids = sorted(p.stem for p in storage.list_files(self.root, "*.parquet") if SHARD_RE.match(p.stem))
        if not ids:
            raise PoolError(f"{self.root}: no shard parquet files (NNNNN.parquet); is this a pool?")
        return ids

    def parquet_path(self, shard: str) -> Path:
        return self.root / f"{shard}.parquet"

    def tar_path(self, shard: str) -> Path:
        return self.root / f"{shard}.tar"

    def has_images(self) -> bool:
        return bool(storage.list_files(self.root, "*.tar"))

    def read_rows(self, shard: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Every input row of a shard, successes and failures."""
        return storage.read_parquet(self.parquet_path(shard), columns=list(columns) if columns else None)

    def read_samples(self, shard: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows that are samples of the pool: successes (or all rows of a metadata-only pool), with uid."""
        table = self.read_rows(shard)
        if "status" in table.column_names:
            table = table.filter(pc.equal(table["status"], "success"))
        table = with_uid(with_caption(table))
        return table.select(list(columns)) if columns else table

    def iter_tar(self, shard: str, damage: list[TarDamage] | None = None) -> Iterator[TarSample]:
        """Stream the samples of a shard's tar, grouping members by key, up to any damage.

        A tar on object storage is copied to a local temp file first (one GET, then local reads)."""
        with storage.local_copy(self.tar_path(shard)) as tar:
            yield from iter_tar_samples(tar, damage)

    def attributes_dir(self, stage: str) -> Path:
        return self.root / "attributes" / stage

    def read_attributes(self, stage: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One stage's attribute table over all shards."""
        paths = storage.list_files(self.attributes_dir(stage), "*.parquet")
        done = storage.list_files(self.attributes_dir(stage) / "_done", "*.done")
        if done:  # trust only committed shards (an interrupted upload may have left some objects)
            committed = {p.name.removesuffix(".done") for p in done}
            paths = [p for p in paths if p.stem in committed]
        if not paths:
            raise PoolError(f"{self.root}: no attributes for stage {stage!r}; run that stage first")
        cols = list(columns) if columns else None
        return pa.concat_tables(storage.read_parquet(p, columns=cols) for p in paths)


def with_caption(table: pa.Table) -> pa.Table:
    """Expose the caption as ``caption`` whatever the source calls it."""
    for name in CAPTION_COLUMNS:
        if name in table.column_names:
            kind = table.schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise PoolError(f"caption column {name!r} holds {kind}, not text")
            return table if name == "caption" else table.append_column("caption", table[name])
    raise PoolError(f"no caption column (looked for {', '.join(CAPTION_COLUMNS)}) in {table.column_names}")


def with_uid(table: pa.Table, keep_null: bool = False) -> pa.Table:
    """Keep the source's uid column, else derive one from url and caption (see curation.core.uid).

    With ``keep_null`` a uid column with nulls and no url to derive them from is kept as it is, so a
    caller can drop those rows one by one instead of failing the shard.
    """
    has_uid = "uid" in table.column_names
    if has_uid and (table["uid"].null_count == 0 or (keep_null and "url" not in table.column_names)):
        return table.set_column(table.schema.get_field_index("uid"), "uid", pc.utf8_lower(table["uid"]))
    if "url" not in table.column_names:
        raise PoolError(
            "uid column has null uids and there is no url column to derive them from"
            if has_uid
            else "rows have neither a uid nor a url column to derive one from"
        )
    uids = pa.array(compute_uids(table["url"].to_pylist(), table["caption"].to_pylist()), pa.string())
    if "uid" in table.column_names:
        uids = pc.coalesce(pc.utf8_lower(table["uid"]), uids)
        return table.set_column(table.schema.get_field_index("uid"), "uid", uids)
    return table.append_column("uid", uids)


def iter_tar_samples(path: Path, damage: list[TarDamage] | None = None) -> Iterator[TarSample]:
    """Group a webdataset tar's members by key, up to any damage (see :func:`iter_groups`);
    ``damage`` (if given) receives what cut the tar short."""
    for key, files in iter_groups(path, _key_ext, damage):
        yield TarSample(key, files)


def _key_ext(name: str) -> tuple[str, str]:
    key, _, ext = Path(name).name.partition(".")
    return key, ext
