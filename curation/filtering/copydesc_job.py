"""The copy-descriptor job: one :mod:`curation.filtering.copydesc` descriptor per pool sample and shard.

Output: ``POOL/attributes/<column>/NNNNN.parquet`` keyed by ``uid`` with ``<column>`` (float16
fixed-size list, null when the image could not be used) and ``<column>_reason`` (null, else
``missing_image``, ``decode_error`` or ``truncated_tar``: a sample lost where a damaged tar is cut
short; the samples before the damage are read as usual), every downloaded row of the shard's
parquet accounted for.
The near-duplicate filter searches it (``embeddings: {attribute: copydesc, column: copydesc}``).
``_copydesc.json`` records the settings, so a resumed run cannot mix two descriptors in one column.
The tar is streamed: only the thumbnails of a shard are held in memory (a tar on object storage is
copied to a local temp file first, by :meth:`Pool.iter_tar`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.core import storage
from curation.core.config import ConfigError
from curation.core.io import atomic_write_json, atomic_write_parquet, read_json
from curation.core.pool import Pool, PoolError
from curation.core.runner import ShardJob
from curation.core.stage import Verdict
from curation.core.stats import StageStats
from curation.core.tarindex import TarDamage
from curation.filtering.copydesc import CopyDescConfig, descriptors, thumbnail

log = logging.getLogger(__name__)

STAGE = "copydesc"
MANIFEST = "_copydesc.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode_format choices


def shard_thumbnails(
    pool: Pool, shard: str, wanted: set[str], size: int, damage: list[TarDamage] | None = None
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Thumbnails of the tar samples whose key is in ``wanted``, and the keys whose image did not decode.

    A damaged tar gives the samples before the damage; what cut it short goes to ``damage``.
    """
    thumbs: dict[str, np.ndarray] = {}
    bad: set[str] = set()
    for sample in pool.iter_tar(shard, damage):
        if sample.key not in wanted:
            continue
        data = next((sample.files[e] for e in IMAGE_EXTS if e in sample.files), None)
        if data is None:
            continue  # no image member: counted as missing_image
        try:
            thumbs[sample.key] = thumbnail(data, size)
        except Exception as exc:  # PIL raises many types for corrupt data; each is a per-sample drop
            log.debug("shard %s key %s: %s", shard, sample.key, exc)
            bad.add(sample.key)
    return thumbs, bad


class CopyDescJob(ShardJob):
    """Copy-detection descriptors of every downloaded sample of ``pool``."""

    name = "copydesc"

    def __init__(self, pool: str | Path, cfg: CopyDescConfig) -> None:
        self.pool = Pool(storage.location(pool))
        self.cfg = cfg
        self.identity: dict | None = None

    def shards(self) -> list[str]:
        if not self.pool.has_images():
            raise PoolError(f"{self.pool.root}: no NNNNN.tar files; copy descriptors need images")
        return self.pool.shard_ids()

    def output_dir(self) -> Path:
        return self.pool.attributes_dir(self.cfg.column)

    def prepare(self) -> None:
        """Pin the output folder to these settings (a resumed run must not mix two descriptors)."""
        identity = self.identity = self.cfg.identity()  # kept: an encoder's is its file's hash
        path = self.output_dir() / MANIFEST
        if path.exists() and (previous := read_json(path)) != identity:
            raise ConfigError(
                f"{self.output_dir()} holds descriptors made with {previous}, not {identity}; "
                "write another column, or delete that folder to recompute"
            )
        atomic_write_json(path, identity)

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        start = time.perf_counter()
        rows = self.pool.read_samples(shard)
        if "key" not in rows.column_names:
            raise PoolError(f"{self.pool.parquet_path(shard)}: no key column to find samples in the tar")
        keys = rows["key"].cast(pa.string()).to_pylist()
        tar = self.pool.tar_path(shard)
        if keys and not tar.exists():
            raise PoolError(f"{tar} is missing but its parquet lists {len(keys)} downloaded samples")
        damage: list[TarDamage] = []
        thumbs, bad = (
            shard_thumbnails(self.pool, shard, set(keys), self.cfg.thumb, damage) if keys else ({}, set())
        )
        ok = np.array([k in thumbs for k in keys], dtype=bool)
        verdict = Verdict.from_rules(
            len(keys),
            [
                ("decode_error", np.array([k in bad for k in keys], dtype=bool)),
                ("truncated_tar", ~ok & bool(damage)),  # lost where the tar is cut short
                ("missing_image", ~ok),
            ],
        )
        table = self.attribute_table(rows, keys, thumbs, ok, verdict)
        atomic_write_parquet(staging / f"{shard}.parquet", table)
        sources = rows["source"] if "source" in rows.column_names else None
        stats = StageStats.from_verdicts(STAGE, verdict.keep, verdict.reason, sources)
        stats.extra["seconds"] = time.perf_counter() - start
        return [stats]

    def attribute_table(
        self, rows: pa.Table, keys: list[str], thumbs: dict[str, np.ndarray], ok: np.ndarray, verdict: Verdict
    ) -> pa.Table:
        size, dim = self.cfg.thumb, self.cfg.dim()
        empty = np.zeros((0, size, size, 3), np.uint8)
        stacked = np.stack([thumbs[k] for k in keys if k in thumbs]) if ok.any() else empty
        matrix = np.zeros((len(keys), dim), np.float16)
        matrix[ok] = descriptors(stacked, self.cfg).astype(np.float16)
        flat = pa.array(matrix.ravel(), pa.float16())
        vectors = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~ok))
        col = self.cfg.column
        return pa.table(
            {"uid": rows["uid"], col: vectors, f"{col}_reason": pa.array(verdict.reason, pa.string())}
        ).replace_schema_metadata({"curation.filtering.copydesc": str(self.identity or self.cfg.identity())})
