"""ImageNet-Captions: ImageNet images with the title, description and tags their Flickr authors wrote.

(Over 400 lines: the id parsing, the join, the captions and the pool job share one plan table and
one list of per-row reasons, so a row's whole fate reads in one file; text cleaning is apart, in
:mod:`curation.builders.metaclean`.)

Fang et al. (2022) traced ~460k ImageNet training images back to Flickr and paired them with their
original text, giving a controlled image-text dataset ("Title: Reflected Duck. Description: ...
Tags: lake, water, bird"). This builder does the same from three inputs:

- an index: ``image_id``, ``label``, ``flickr_id`` (optional ``class_name``), one row per image;
- Flickr metadata: ``photo_id``, ``title``, ``description``, ``tags`` (parquet), or the
  YFCC100M dataset file itself (tab-separated, see :data:`YFCC100M_COLUMNS`);
- the images: a folder of files (``<wnid>/<image_id>.JPEG``) or of webdataset tars.

The join is one DuckDB query (first metadata row per photo id, first index row per image id);
captions are built and cleaned column-wise (:mod:`curation.builders.metaclean`). Every index row ends up in
the output pool's parquet, either as a sample (``status == "success"``, with ``KEY.jpg/.txt/.json
/.cls`` in the tar) or with the reason it is not one: ``duplicate_image``, ``no_flickr_id``,
``bad_flickr_id``, ``no_metadata``, ``empty_text``, ``missing_image``, ``truncated_tar`` (the image
was lost where a tar of the images folder is cut short), ``corrupt_image``.

Every input and the output pool may be a local path or a URL (:mod:`curation.core.storage`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from pydantic import Field, model_validator

from curation.builders.imagenet_captions_report import finish_report
from curation.builders.metaclean import clean_tags, clean_text, url_decode
from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.imagestore import ImageReader, TornTar, locate_images
from curation.core.io import atomic_path, atomic_write_json, atomic_write_parquet, read_json
from curation.core.runner import ShardJob
from curation.core.stats import StageStats, count_verdicts
from curation.core.uid import compute_uids
from curation.engines import JobReport, run_job

log = logging.getLogger(__name__)

# The YFCC100M dataset file (yfcc100m_dataset, 25 tab-separated columns; SLIP's YFCC15M script reads
# title, description and user tags from columns 8, 9 and 10).
YFCC100M_COLUMNS = (
    "line_number", "photo_id", "photo_hash", "user_nsid", "user_nickname", "date_taken", "date_uploaded",
    "capture_device", "title", "description", "tags", "machine_tags", "longitude", "latitude", "accuracy",
    "page_url", "download_url", "license_name", "license_url", "server_id", "farm_id", "secret",
    "secret_original", "extension_original", "marker",
)  # fmt: skip
META_FIELDS = ("title", "description", "tags")
JOIN_REASONS = ("duplicate_image", "no_flickr_id", "bad_flickr_id", "no_metadata")


class ImagenetCaptionsError(ValueError):
    """Inputs that are not in the expected format."""


class CaptionPart(ConfigModel):
    field: Literal["title", "description", "tags"]
    label: str = ""  # "Title" -> "Title: <text>"; "" -> just the text


class ImagenetCaptionsConfig(ConfigModel):
    parts: list[CaptionPart] = Field(
        default_factory=lambda: [
            CaptionPart(field="title", label="Title"),
            CaptionPart(field="description", label="Description"),
            CaptionPart(field="tags", label="Tags"),
        ]
    )
    separator: str = ". "  # between parts
    label_separator: str = ": "
    skip_empty: bool = True  # leave out a part whose field is empty (False: "Description: " stays)
    url_encoded: list[Literal["title", "description", "tags"]] = Field(
        default_factory=lambda: ["title", "description", "tags"]
    )
    tag_separator: str = ", "
    max_tags: int | None = Field(None, ge=1)
    remove_urls: bool = False
    meta_format: Literal["auto", "parquet", "yfcc100m"] = "auto"
    source: str = "imagenet_captions"
    shard_size: int = Field(10000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _parts(self) -> ImagenetCaptionsConfig:
        if not self.parts:
            raise ValueError("parts: at least one field makes the caption")
        return self


# ------------------------------------------------------------------------------------------ inputs


def read_index(path: str | Path) -> pa.Table:
    """The image index (parquet): image_id, label, flickr_id, optional class_name."""
    table = storage.read_parquet(path)
    missing = [c for c in ("image_id", "label", "flickr_id") if c not in table.column_names]
    if missing:
        raise ImagenetCaptionsError(f"{path}: index lacks column(s) {missing}; has {table.column_names}")
    if "class_name" not in table.column_names:
        table = table.append_column("class_name", pa.nulls(table.num_rows, pa.string()))
    return table.select(["image_id", "label", "class_name", "flickr_id"])


def read_meta(path: str | Path, fmt: str = "auto") -> pa.Table:
    """Flickr metadata: photo_id, title, description, tags (from parquet or the YFCC100M TSV)."""
    path = storage.location(path)
    if fmt == "auto":
        fmt = "parquet" if path.suffix == ".parquet" else "yfcc100m"
    if fmt == "parquet":
        table = storage.read_parquet(path)
        missing = [c for c in ("photo_id", *META_FIELDS) if c not in table.column_names]
        if missing:
            raise ImagenetCaptionsError(
                f"{path}: metadata lacks column(s) {missing}; has {table.column_names}"
            )
        return table.select(["photo_id", *META_FIELDS])
    columns = ", ".join(f"'{c}': 'VARCHAR'" for c in YFCC100M_COLUMNS)
    con = duckdb.connect()
    try:
        with storage.local_copy(path) as local:  # DuckDB reads local files (no httpfs offline)
            return con.sql(
                f"SELECT photo_id, title, description, tags FROM read_csv(?, delim='\\t', header=false, "
                f"quote='', escape='', columns={{{columns}}}, null_padding=true)",
                params=[str(local)],
            ).to_arrow_table()
    except duckdb.Error as exc:
        raise ImagenetCaptionsError(f"{path}: not a YFCC100M dataset file: {exc}") from exc
    finally:
        con.close()


JOIN_SQL = """
WITH
  i AS (
    SELECT row_idx, CAST(image_id AS VARCHAR) AS image_id, label, class_name, flickr_id, fid, fid_bad,
           row_number() OVER (PARTITION BY CAST(image_id AS VARCHAR) ORDER BY row_idx) AS id_rank
    FROM idx),
  m_all AS (
    SELECT pid, title, description, tags, row_number() OVER (PARTITION BY pid ORDER BY meta_row) AS r
    FROM meta),
  m AS (SELECT * FROM m_all WHERE pid IS NOT NULL AND r = 1),
  g AS (SELECT * FROM (
          SELECT *, row_number() OVER (PARTITION BY image_id ORDER BY img_row) AS r FROM img) WHERE r = 1)
SELECT i.row_idx, i.image_id, i.label, i.class_name, i.fid AS flickr_id,
       CASE WHEN i.id_rank > 1 THEN 'duplicate_image'
            WHEN i.fid_bad THEN 'bad_flickr_id'
            WHEN i.fid IS NULL THEN 'no_flickr_id'
            WHEN m.pid IS NULL THEN 'no_metadata' END AS join_reason,
       m.title, m.description, m.tags,
       g.container, g.path, g."offset", g.size, g.ext
FROM i LEFT JOIN m ON i.fid = m.pid AND i.id_rank = 1
       LEFT JOIN g ON i.image_id = g.image_id
ORDER BY i.row_idx
"""

META_STATS_SQL = """
WITH
  fids AS (SELECT DISTINCT fid FROM idx),
  m AS (SELECT pid, row_number() OVER (PARTITION BY pid ORDER BY meta_row) AS r
        FROM meta)
SELECT count(*) AS meta_rows,
       count(*) FILTER (WHERE pid IS NULL) AS meta_rows_without_photo_id,
       count(*) FILTER (WHERE pid IS NOT NULL AND r > 1) AS duplicate_meta_rows,
       count(*) FILTER (WHERE pid IS NOT NULL AND r = 1
                        AND pid NOT IN (SELECT fid FROM fids WHERE fid IS NOT NULL)) AS orphan_meta_rows
FROM m
"""


DIGITS_RE = r"^[0-9]+$"
MAX_EXACT_FLOAT = 2**53  # above this a float id may already have been rounded


def parse_ids(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Flickr ids as int64 (null where missing or bad) and which non-missing ids are bad.

    An id is a non-negative integer: an integer column, a float column holding whole numbers (pandas
    writes int columns with gaps as floats), or a string of decimal digits (spaces around allowed).
    "1016.7", "1e3", "-5", "0x10" and ids past int64 are bad, never rounded or parsed as numbers;
    an empty string is a missing id.
    """
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = col.type
    if pa.types.is_dictionary(kind) or pa.types.is_large_string(kind):
        col = col.cast(pa.string())
        kind = col.type
    present = pc.is_valid(col).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(kind):
        ok = present & pc.fill_null(pc.greater_equal(col, 0), False).to_numpy(zero_copy_only=False)
        values = pc.if_else(pa.array(ok), col.cast(pa.int64(), safe=False), pa.scalar(None, pa.int64()))
        return values, present & ~ok
    if pa.types.is_floating(kind):
        x = col.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = present & np.isfinite(x) & (x >= 0) & (x < MAX_EXACT_FLOAT) & (np.floor(x) == x)
        return pa.array(np.where(ok, x, 0).astype(np.int64), pa.int64(), mask=~ok), present & ~ok
    if not pa.types.is_string(kind):
        return pa.nulls(len(col), pa.int64()), present
    text = pc.utf8_trim_whitespace(col)
    present &= pc.fill_null(pc.greater(pc.utf8_length(text), 0), False).to_numpy(zero_copy_only=False)
    digits = pc.fill_null(pc.match_substring_regex(text, DIGITS_RE), False).to_numpy(zero_copy_only=False)
    short = digits & (pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False) <= 18)
    ok = present & short
    values = pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())).cast(pa.int64())
    return values, present & ~ok


def join_tables(index: pa.Table, meta: pa.Table, images: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """One row per index row (in index order) with its metadata, image location and join reason."""
    fid, fid_bad = parse_ids(index["flickr_id"])
    idx = index.append_column("row_idx", pa.array(np.arange(index.num_rows, dtype=np.int64)))
    idx = idx.append_column("fid", fid).append_column("fid_bad", pa.array(fid_bad))
    meta = meta.append_column("meta_row", pa.array(np.arange(meta.num_rows, dtype=np.int64)))
    meta = meta.append_column("pid", parse_ids(meta["photo_id"])[0])
    img = images.append_column("img_row", pa.array(np.arange(images.num_rows, dtype=np.int64)))
    con = duckdb.connect()
    try:
        for name, table in (("idx", idx), ("meta", meta), ("img", img)):
            con.register(name, table)
        joined = con.sql(JOIN_SQL).to_arrow_table()
        row = con.sql(META_STATS_SQL).fetchall()[0]
    finally:
        con.close()
    keys = ("meta_rows", "meta_rows_without_photo_id", "duplicate_meta_rows", "orphan_meta_rows")
    meta_stats = dict(zip(keys, (int(x) for x in row), strict=True))
    if joined.num_rows != index.num_rows:  # the query keeps one row per index row by construction
        raise AssertionError(f"join returned {joined.num_rows} rows for {index.num_rows} index rows")
    return joined, meta_stats


# ---------------------------------------------------------------------------------------- captions


def cleaned_fields(joined: pa.Table, cfg: ImagenetCaptionsConfig) -> dict[str, pa.Array]:
    """Each metadata field decoded and cleaned (empty strings where the field has no text)."""
    out = {}
    for name in META_FIELDS:
        col = joined[name].combine_chunks().cast(pa.string())
        if name == "tags":
            col = clean_tags(col, "tags" in cfg.url_encoded, cfg.tag_separator, cfg.max_tags)
        else:
            col = clean_text(url_decode(col) if name in cfg.url_encoded else col, cfg.remove_urls)
        out[name] = pc.fill_null(col, "")
    return out


def _join_nonempty(parts: list[pa.Array], separator: str) -> pa.Array:
    """Row-wise join of the non-empty strings of ``parts`` (no nulls in, none out).

    A separator that starts with a full stop loses it after text that already ends a sentence, so
    "...in 2008." and "Tags: x" join as "...in 2008. Tags: x", not "2008.. Tags".
    """
    short = separator.lstrip(".") if separator.startswith(".") else separator
    acc = parts[0]
    for part in parts[1:]:
        ends_sentence = pc.match_substring_regex(acc, r"[.!?…]$")
        both = pc.if_else(
            ends_sentence,
            pc.binary_join_element_wise(acc, part, short),
            pc.binary_join_element_wise(acc, part, separator),
        )
        acc_empty = pc.equal(pc.utf8_length(acc), 0)
        part_empty = pc.equal(pc.utf8_length(part), 0)
        acc = pc.if_else(acc_empty, part, pc.if_else(part_empty, acc, both))
    return acc


def format_captions(fields: dict[str, pa.Array], cfg: ImagenetCaptionsConfig) -> tuple[pa.Array, np.ndarray]:
    """Captions from the configured parts, and which rows have any text at all."""
    parts = []
    has_text = np.zeros(len(next(iter(fields.values()))), dtype=bool)
    for part in cfg.parts:
        value = fields[part.field]
        nonempty = pc.greater(pc.utf8_length(value), 0)
        has_text |= nonempty.to_numpy(zero_copy_only=False)
        prefix = f"{part.label}{cfg.label_separator}" if part.label else ""
        text = pc.binary_join_element_wise(prefix, value, "") if prefix else value
        if cfg.skip_empty:
            text = pc.if_else(nonempty, text, "")
        parts.append(text)
    return pc.utf8_trim_whitespace(_join_nonempty(parts, cfg.separator)), has_text


def build_plan(
    index_path: str | Path, meta_path: str | Path, images_dir: str | Path, cfg: ImagenetCaptionsConfig
) -> tuple[pa.Table, dict[str, Any]]:
    """Every index row with its caption, image location and status before images are read."""
    index = read_index(index_path)
    meta = read_meta(meta_path, cfg.meta_format)
    torn: list[TornTar] = []
    images = locate_images(images_dir, torn)
    joined, meta_stats = join_tables(index, meta, images)
    fields = cleaned_fields(joined, cfg)
    caption, has_text = format_captions(fields, cfg)
    reason = joined["join_reason"].combine_chunks()
    joined_ok = pc.is_null(reason).to_numpy(zero_copy_only=False)
    no_image = pc.is_null(joined["ext"]).to_numpy(zero_copy_only=False)
    reason = pc.if_else(pa.array(joined_ok & ~has_text), "empty_text", reason)
    lost = lost_to_damage(joined["image_id"], torn)
    reason = pc.if_else(pa.array(joined_ok & has_text & no_image & lost), "truncated_tar", reason)
    reason = pc.if_else(pa.array(joined_ok & has_text & no_image & ~lost), "missing_image", reason)
    plan = pa.table(
        {
            "row_idx": joined["row_idx"],
            "image_id": joined["image_id"],
            "label": joined["label"].cast(pa.int64()),
            "class_name": joined["class_name"].cast(pa.string()),
            "flickr_id": joined["flickr_id"],
            "title": pc.if_else(joined_ok, fields["title"], pa.scalar(None, pa.string())),
            "description": pc.if_else(joined_ok, fields["description"], pa.scalar(None, pa.string())),
            "tags": pc.if_else(joined_ok, fields["tags"], pa.scalar(None, pa.string())),
            "caption": pc.if_else(pa.array(joined_ok & has_text), caption, pa.scalar(None, pa.string())),
            "status": pc.fill_null(reason, "pending"),
            **{c: joined[c] for c in ("container", "path", "offset", "size", "ext")},
        }
    )
    info = {
        "index_rows": index.num_rows,
        "images_found": images.num_rows,
        "torn_tars": [  # lost_images: None when the tar has no parquet listing its images
            {
                "tar": t.container,
                "damage": t.damage,
                "lost_images": None if t.lost_ids is None else len(t.lost_ids),
            }
            for t in torn
        ],
        **meta_stats,
    }
    return plan, info


def lost_to_damage(image_ids: pa.ChunkedArray, torn: list[TornTar]) -> np.ndarray:
    """Which ids may be images lost in a torn tar: those its parquet lists, or, when a torn tar has
    no such listing, every id (an image not found may then have been after the damage)."""
    if any(t.lost_ids is None for t in torn):
        return np.ones(len(image_ids), dtype=bool)
    lost = sorted(set().union(*(t.lost_ids or () for t in torn)))
    return pc.is_in(image_ids, pa.array(lost, pa.string())).to_numpy(zero_copy_only=False)


# -------------------------------------------------------------------------------------------- pool


ERROR_MESSAGES = {
    "duplicate_image": "image_id already listed earlier in the index",
    "no_flickr_id": "index row has no flickr_id",
    "bad_flickr_id": "flickr_id is not a non-negative whole number (e.g. '1016.7', '1e3')",
    "no_metadata": "no metadata row for this flickr_id",
    "empty_text": "title, description and tags are all empty after cleaning",
    "missing_image": "image not found in the images folder",
    "truncated_tar": "image lost where a tar of the images folder is cut short",
    "corrupt_image": "image could not be opened",
}


def plan_path(out: Path) -> Path:
    return out / "_work" / "plan.parquet"


class ImagenetCaptionsJob(ShardJob):
    """Write one pool shard per ``shard_size`` plan rows: tar of samples + parquet of every row."""

    name = "imagenet_captions"

    def __init__(self, out: str | Path, cfg: ImagenetCaptionsConfig, n_rows: int) -> None:
        self.out = storage.location(out)
        self.cfg = cfg
        self.n_rows = n_rows
        self.digits = max(1, math.ceil(math.log10(cfg.shard_size)) if cfg.shard_size > 1 else 1)

    def shards(self) -> list[str]:
        return [f"{i:05d}" for i in range(max(1, math.ceil(self.n_rows / self.cfg.shard_size)))]

    def output_dir(self) -> Path:
        return self.out

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        lo = int(shard) * self.cfg.shard_size
        rows = [("row_idx", ">=", lo), ("row_idx", "<", lo + self.cfg.shard_size)]
        plan = _read_plan(plan_path(self.out), rows)
        keys = [f"{shard}{i:0{self.digits}d}" for i in range(plan.num_rows)]
        urls = [f"imagenet:{x}" for x in plan["image_id"].to_pylist()]
        uids = compute_uids(urls, plan["caption"].to_pylist())
        import webdataset as wds  # imports torch: only where tars are written, not on every CLI start

        with atomic_path(staging / f"{shard}.tar") as tmp, open(tmp, "wb") as f:
            written = self._write_samples(wds.TarWriter(f), plan, keys, uids)
        table = self._shard_table(plan, {"key": keys, "uid": uids, "url": urls, **written})
        atomic_write_parquet(staging / f"{shard}.parquet", table)
        status = written["status"]
        counts = {s: status.count(s) for s in sorted(set(status))}
        atomic_write_json(
            staging / f"{shard}_stats.json",
            {"count": len(status), "successes": counts.get("success", 0), "status_dict": counts},
        )
        return shard_stats(table)

    def _write_samples(
        self, sink: Any, plan: pa.Table, keys: list[str], uids: list[str]
    ) -> dict[str, list[Any]]:
        """Read, check and write every pending sample; returns final status, size and sha256 per row."""
        n = plan.num_rows
        out: dict[str, list[Any]] = {
            "status": plan["status"].to_pylist(),
            "width": [None] * n,
            "height": [None] * n,
            "sha256": [None] * n,
        }
        reader = ImageReader()
        try:
            for i, row in enumerate(plan.to_pylist()):  # image I/O is per sample by nature
                if out["status"][i] != "pending":
                    continue
                try:
                    data = reader.read(row["container"] or "", row["path"] or "", row["offset"], row["size"])
                    with Image.open(io.BytesIO(data)) as im:
                        size = im.size
                        im.verify()
                except OSError as exc:  # PIL's UnidentifiedImageError is an OSError too
                    out["status"][i] = "corrupt_image"
                    log.debug("%s: %s", row["image_id"], exc)
                    continue
                out["status"][i] = "success"
                out["width"][i], out["height"][i] = size
                out["sha256"][i] = hashlib.sha256(data).hexdigest()
                meta = {
                    "key": keys[i],
                    "uid": uids[i],
                    "source": self.cfg.source,
                    **{c: row[c] for c in ("image_id", "label", "class_name", "flickr_id", "caption")},
                    **{c: row[c] for c in META_FIELDS},
                    "width": size[0],
                    "height": size[1],
                    "sha256": out["sha256"][i],
                    "status": "success",
                }
                sample = {
                    "__key__": keys[i],
                    row["ext"]: data,
                    "txt": row["caption"],
                    "json": json.dumps(meta),
                }
                if row["label"] is not None:
                    sample["cls"] = str(row["label"])
                sink.write(sample)
        finally:
            sink.close()
            reader.close()
        return out

    def _shard_table(self, plan: pa.Table, cols: dict[str, list[Any]]) -> pa.Table:
        """img2dataset's parquet columns, plus ours (uid, source, label, the metadata fields)."""
        status = cols["status"]
        errors = [None if s == "success" else ERROR_MESSAGES.get(s, s) for s in status]
        size = {c: pa.array(cols[c], pa.int64()) for c in ("width", "height")}
        return pa.table(
            {
                "key": pa.array(cols["key"], pa.string()),
                "uid": pa.array(cols["uid"], pa.string()),
                "url": pa.array(cols["url"], pa.string()),
                "caption": plan["caption"],
                "source": pa.array([self.cfg.source] * plan.num_rows, pa.string()),
                **{c: plan[c] for c in ("label", "class_name", "image_id", "flickr_id", *META_FIELDS)},
                "status": pa.array(status, pa.string()),
                "error_message": pa.array(errors, pa.string()),
                **size,
                "original_width": size["width"],
                "original_height": size["height"],
                "sha256": pa.array(cols["sha256"], pa.string()),
            }
        )


def _read_plan(path: Path, filters: list[tuple[str, str, int]]) -> pa.Table:
    if not storage.is_remote(path):
        return pq.read_table(path, filters=filters)
    with storage.storage_errors(path, "read"):
        return pq.read_table(path.path, filesystem=path.fs, filters=filters)


def shard_stats(table: pa.Table) -> list[StageStats]:
    """Funnel of one shard: join -> caption -> image, each stage seeing what the previous kept."""
    status = table["status"].combine_chunks()
    source = table["source"]
    stages = []
    alive = np.ones(table.num_rows, dtype=bool)
    for stage, reasons in (
        ("join", JOIN_REASONS),
        ("caption", ("empty_text",)),
        ("image", ("missing_image", "truncated_tar", "corrupt_image")),
    ):
        dropped = pc.is_in(status, pa.array(reasons)).to_numpy(zero_copy_only=False)
        sel = pa.array(alive)
        reason = pc.if_else(pa.array(dropped), status, pa.scalar(None, pa.string())).filter(sel)
        stages.append(count_verdicts(stage, ~dropped[alive], reason, source.filter(sel)))
        alive &= ~dropped
    return stages


def write_plan(plan: pa.Table, out: Path, cfg: ImagenetCaptionsConfig) -> None:
    with atomic_path(plan_path(out)) as tmp:
        pq.write_table(plan, tmp, row_group_size=cfg.shard_size)


def prepare_output(out: Path, stamp: dict[str, Any], overwrite: bool) -> None:
    """Refuse to resume into a pool built from other inputs or settings (finished shards would stay)."""
    stamp_path = out / "_work" / "run.json"
    if overwrite:
        for pattern in ("[0-9]*.tar", "[0-9]*.parquet", "[0-9]*_stats.json"):
            for p in storage.list_files(out, pattern):
                storage.remove(p)
        for d in ("_done", "_stats", "_work", "_pending"):
            storage.remove(out / d, recursive=True)
    if stamp_path.exists() and read_json(stamp_path) != stamp:
        raise ImagenetCaptionsError(
            f"{out} holds a pool built from other inputs or settings ({stamp_path}); "
            "use --overwrite or a new --out"
        )
    atomic_write_json(stamp_path, stamp)


def run_imagenet_captions(
    index: str | Path,
    meta: str | Path,
    images: str | Path,
    out: str | Path,
    cfg: ImagenetCaptionsConfig,
    engine: str = "local",
    workers: int = 1,
    overwrite: bool = False,
) -> tuple[JobReport, dict[str, Any] | None]:
    """Join, plan, write the pool shard by shard (resumable, any engine), then the report."""
    out = storage.location(out)
    stamp = {
        "index": str(index),
        "meta": str(meta),
        "images": str(images),
        "config": cfg.model_dump(mode="json"),
    }
    prepare_output(out, stamp, overwrite)
    plan, info = build_plan(index, meta, images, cfg)
    write_plan(plan, out, cfg)
    atomic_write_json(out / "_work" / "join_info.json", info)
    report = run_job(ImagenetCaptionsJob(out, cfg, plan.num_rows), engine, workers=workers)
    if report.failed:
        return report, None
    funnel = report.funnel()
    funnel.check()
    if funnel.stages[0].total.seen != info["index_rows"]:
        raise AssertionError(
            f"pool accounts for {funnel.stages[0].total.seen} of {info['index_rows']} index rows"
        )
    return report, finish_report(out, funnel, info, cfg.model_dump(mode="json"))
