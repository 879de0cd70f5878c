"""Reshard plan: which pool member bytes go, in which order, into which output shard.

Phase 1 (:class:`MatchJob`, per pool shard, through the shard runner): the pool rows whose uid is
in the subset, with the byte ranges of their tar members (from the tar headers only).
Phase 2 (:func:`build_plan`, once): keep the first pool row of each uid, repeat it as many times
as the subset lists the uid, attach labels, order (pool order, or a seeded shuffle) and cut into
output shards of ``shard_size``; one small parquet per output shard. Every subset entry that cannot
be written is counted with its reason (``missing_in_pool``, ``missing_in_tar``, ``truncated_tar``: lost
where its pool tar is cut short, ``missing_label``).

The plan is a pure function of (pool, subset, labels, settings); it is fingerprinted so a rerun
reuses it and resumes writing, and a different request refuses to mix into the same directory.
Every location may be a URL (:mod:`curation.core.storage`): a pool tar on object storage is copied
to a local temp file once for its header scan.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.io import atomic_write_parquet
from curation.core.pool import Pool
from curation.core.runner import ShardJob
from curation.core.stats import Counts, StageStats
from curation.core.subset import Subset
from curation.core.tarindex import TarDamage, index_tar
from curation.core.uidvec import hex_to_uids, lookup, uids_to_hex_array

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MEMBER_TYPE = pa.list_(pa.struct([("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]))
KEY_DIGITS = 6  # output key = 5-digit shard + 6-digit position


class ReshardConfig(ConfigModel):
    shard_size: int = 10_000  # samples per output shard (< 10^6: the key holds the position in 6 digits)
    shuffle: bool = False  # seeded global shuffle of samples across and within output shards
    seed: int = 0
    label_column: str = "label"  # column of the label table (uid -> integer label), written as KEY.cls
    max_open_tars: int = 64


class MatchJob(ShardJob):
    """Per pool shard: subset rows with their tar member byte ranges."""

    name = "reshard-match"

    def __init__(self, pool: Pool, subset_path: Path, out: Path) -> None:
        self.pool = pool
        self.subset_path = storage.location(subset_path)
        self.out = storage.location(out)
        self._unique: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_unique": None}  # workers load the subset themselves

    def shards(self) -> list[str]:
        return self.pool.shard_ids()

    def output_dir(self) -> Path:
        return self.out

    def setup(self) -> None:
        self._unique = Subset.load(self.subset_path).counts()[0]

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        if self._unique is None:
            self.setup()
        assert self._unique is not None
        samples = self.pool.read_samples(shard)
        uids, valid = hex_to_uids(samples["uid"])
        wanted = valid & (lookup(self._unique, uids) >= 0)
        rows = np.flatnonzero(wanted)
        keys = [str(k) for k in samples["key"].take(pa.array(rows)).to_pylist()]
        tar = self.pool.tar_path(shard)
        damage: list[TarDamage] = []
        index = {}
        if len(keys) and tar.exists():
            with storage.local_copy(tar) as local:  # a tar on object storage: one GET, then local reads
                index = index_tar(local, set(keys), damage)
        members = [[m.__dict__ for m in index.get(k, [])] for k in keys]
        has_image = [any(m["ext"] in IMAGE_EXTS for m in ms) for ms in members]
        source = (
            pc.fill_null(pc.cast(samples["source"], pa.string()), "unknown")
            if "source" in samples.column_names
            else pa.array(["unknown"] * samples.num_rows, pa.string())
        )
        table = pa.table(
            {
                "uid": uids_to_hex_array(uids[rows]),
                "hi": pa.array(uids["f0"][rows], pa.uint64()),
                "lo": pa.array(uids["f1"][rows], pa.uint64()),
                "pool_shard": pa.array([shard] * len(rows), pa.string()),
                "row": pa.array(rows, pa.int64()),
                "pool_key": pa.array(keys, pa.string()),
                "source": source.take(pa.array(rows)),
                "members": pa.array(members, MEMBER_TYPE),
                "in_tar": pa.array(has_image, pa.bool_()),
                "tar_damaged": pa.array([bool(damage)] * len(rows), pa.bool_()),
            }
        )
        atomic_write_parquet(staging / f"{shard}.parquet", table)
        n = samples.num_rows
        reasons = Counter({"not_in_subset": n - len(rows)}) if n > len(rows) else Counter()
        return [StageStats(self.name, total=Counts(n, len(rows), reasons))]


def fingerprint(pool: Pool, subset_path: Path, labels: Path | None, cfg: ReshardConfig) -> dict[str, Any]:
    """What the plan depends on; a rerun with the same fingerprint resumes, any other is refused."""
    return {
        "pool": _resolved(pool.root),
        "subset_sha256": hashlib.sha256(storage.read_bytes(subset_path)).hexdigest(),
        "labels": _resolved(labels) if labels else None,
        "labels_sha256": _tree_sha(labels) if labels else None,
        "config": cfg.model_dump(exclude={"max_open_tars"}),
    }


def _resolved(loc: Path) -> str:
    """An absolute local path, or the URL as given."""
    return storage.url(loc) if storage.is_remote(loc) else str(loc.resolve())


def _tree_sha(path: Path) -> str:
    h = hashlib.sha256()
    for f in label_files(path):
        h.update(storage.read_bytes(f))
    return h.hexdigest()


def label_files(path: Path) -> list[Path]:
    """A label table's parquet files: the file itself, or every ``*.parquet`` under the folder,
    sorted by their path within it (the same order locally and on object storage)."""
    path = storage.location(path)
    if path.is_file():
        return [path]
    if not storage.is_remote(path):
        return sorted(path.rglob("*.parquet"))
    root = path.path.rstrip("/")
    with storage.storage_errors(path, "list"):
        try:
            found = path.fs.find(root)
        except FileNotFoundError:
            found = []
    rel = [name[len(root) + 1 :] for name in found if name.endswith(".parquet")]
    return [path / r for r in sorted(rel, key=lambda r: r.split("/"))]


def load_labels(path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A label table (parquet file or directory; ``uid`` + integer ``column``) as sorted uids and labels."""
    files = label_files(path)
    if not files:
        raise ValueError(f"label table not found: {path}")
    table = pa.concat_tables(storage.read_parquet(f, columns=["uid", column]) for f in files)
    if not pa.types.is_integer(table[column].type):
        raise ValueError(f"label column {column!r} of {path} is {table[column].type}, expected integers")
    uids, valid = hex_to_uids(table["uid"])
    labels = table[column].to_numpy(zero_copy_only=False)
    ok = valid & ~pc.is_null(table[column]).to_numpy(zero_copy_only=False)
    uids, labels = uids[ok], labels[ok].astype(np.int64)
    order = np.lexsort((uids["f1"], uids["f0"]))
    uids, labels = uids[order], labels[order]
    if len(uids) > 1 and (uids[1:] == uids[:-1]).any():
        raise ValueError(f"label table {path} gives more than one label to some uids")
    return uids, labels


def build_plan(
    matched_files: list[Path],
    subset: Subset,
    labels: tuple[np.ndarray, np.ndarray] | None,
    cfg: ReshardConfig,
) -> tuple[list[pa.Table], StageStats, dict[str, Any]]:
    """Output shard tables, the reshard stage stats, and a summary (missing uids, duplicates)."""
    if not 0 < cfg.shard_size < 10**KEY_DIGITS:
        raise ValueError(f"shard_size must be in 1..{10**KEY_DIGITS - 1}")
    matched = pa.concat_tables(storage.read_parquet(f) for f in matched_files) if matched_files else None
    unique, counts = subset.counts()
    stats = StageStats("reshard", total=Counts(seen=len(subset)))
    summary: dict[str, Any] = {}
    if matched is None or matched.num_rows == 0:
        matched = pa.table({"uid": pa.array([], pa.string())})
        first = np.zeros(0, dtype=np.int64)
    else:
        first = _first_rows(matched)
    summary["duplicates_in_pool"] = int(matched.num_rows - len(first))
    matched = matched.take(pa.array(first))
    uids = np.empty(matched.num_rows, dtype=unique.dtype)
    if matched.num_rows:
        uids["f0"] = matched["hi"].to_numpy()
        uids["f1"] = matched["lo"].to_numpy()
    pos = lookup(unique, uids)
    copies = counts[pos]
    found = np.zeros(len(unique), dtype=bool)
    found[pos] = True
    missing = np.flatnonzero(~found)
    _drop(stats, "unknown", "missing_in_pool", int(counts[missing].sum()))
    summary["missing_in_pool"] = {
        "uids": len(missing),
        "copies": int(counts[missing].sum()),
        "examples": uids_to_hex_array(unique[missing[:5]]).to_pylist(),
    }
    if len(missing):
        log.warning(
            "%d subset uids (%d copies) are not in the pool, e.g. %s; counted as missing_in_pool",
            len(missing),
            summary["missing_in_pool"]["copies"],
            summary["missing_in_pool"]["examples"][:3],
        )
    sources = matched["source"] if matched.num_rows else pa.array([], pa.string())
    keep = (
        matched["in_tar"].to_numpy(zero_copy_only=False).astype(bool)
        if matched.num_rows
        else np.zeros(0, dtype=bool)
    )
    damaged = (  # absent in the plan of a run made before torn tars were told apart
        matched["tar_damaged"].to_numpy(zero_copy_only=False).astype(bool)
        if "tar_damaged" in matched.column_names
        else np.zeros(len(keep), dtype=bool)
    )
    _drop_rows(stats, sources, copies, ~keep & damaged, "truncated_tar")
    _drop_rows(stats, sources, copies, ~keep & ~damaged, "missing_in_tar")
    label_values = None
    if labels is not None:
        lpos = lookup(labels[0], uids)
        _drop_rows(stats, sources, copies, keep & (lpos < 0), "missing_label")
        keep &= lpos >= 0
        label_values = np.where(lpos >= 0, labels[1][np.maximum(lpos, 0)], 0)
    rows = np.flatnonzero(keep)
    entry_rows = np.repeat(rows, copies[rows])
    starts = np.repeat(np.cumsum(copies[rows]) - copies[rows], copies[rows])
    entry_copy = np.arange(len(entry_rows)) - starts
    if cfg.shuffle:
        order = np.random.default_rng(cfg.seed).permutation(len(entry_rows))
        entry_rows, entry_copy = entry_rows[order], entry_copy[order]
    if len(entry_rows):
        for vc in pc.value_counts(matched["source"].take(pa.array(entry_rows))).to_pylist():
            c = stats.by_source.setdefault(str(vc["values"]), Counts())
            c.seen += vc["counts"]
            c.kept += vc["counts"]
    stats.total.kept = len(entry_rows)
    summary["upsampled_uids"] = int((copies[rows] > 1).sum())
    tables = []
    for s, start in enumerate(range(0, len(entry_rows), cfg.shard_size)):
        idx = entry_rows[start : start + cfg.shard_size]
        part = matched.take(pa.array(idx)).select(["uid", "source", "pool_shard", "pool_key", "members"])
        keys = [f"{s:05d}{i:0{KEY_DIGITS}d}" for i in range(len(idx))]
        part = part.append_column("key", pa.array(keys, pa.string()))
        part = part.append_column("copy", pa.array(entry_copy[start : start + cfg.shard_size], pa.int64()))
        if label_values is not None:
            part = part.append_column("label", pa.array(label_values[idx], pa.int64()))
        tables.append(part)
    return tables, stats, summary


def _first_rows(matched: pa.Table) -> np.ndarray:
    """Row numbers of the first pool row (by shard, then row) of each uid."""
    order = pa.array(np.arange(matched.num_rows, dtype=np.int64))
    t = pa.table({"uid": matched["uid"], "order": order})
    first = t.group_by("uid", use_threads=False).aggregate([("order", "min")])["order_min"]
    return np.sort(first.to_numpy())


def _drop(stats: StageStats, source: str, reason: str, n: int) -> None:
    if n <= 0:
        return
    c = stats.by_source.setdefault(source, Counts())
    c.seen += n
    c.dropped[reason] += n
    stats.total.dropped[reason] += n


def _drop_rows(
    stats: StageStats, sources: pa.ChunkedArray | pa.Array, copies: np.ndarray, mask: np.ndarray, reason: str
) -> None:
    idx = np.flatnonzero(mask)
    for src, n in zip(sources.take(pa.array(idx)).to_pylist(), copies[idx].tolist(), strict=True):
        _drop(stats, str(src), reason, int(n))


def write_plan(plan_dir: Path, tables: list[pa.Table]) -> None:
    for i, t in enumerate(tables):
        atomic_write_parquet(plan_dir / f"{i:05d}.parquet", t)
