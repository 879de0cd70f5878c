"""``curate train-encoder``: fit a copy-detection encoder on a pool's own thumbnails.

Thumbnails are read from the pool's tars the way the ``copydesc`` stage reads them (the same
draft-mode decode and box filter, so training and embedding see the same pixels), from shards in a
seeded order until ``max_images``. The encoder goes to ``out`` (TorchScript, a path or a URL) and its
figures to ``out``.json; ``curate copydesc --set kind=encoder --set encoder=OUT`` then embeds every
sample with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.core import storage
from curation.core.io import atomic_write_json
from curation.core.pool import Pool, PoolError
from curation.core.progress import make_progress
from curation.filtering.copy_encoder import TrainEncoderConfig, fit_encoder, save_encoder
from curation.filtering.copydesc_job import shard_thumbnails

log = logging.getLogger(__name__)


def pool_thumbnails(pool: Pool, size: int, limit: int, seed: int) -> np.ndarray:
    """Up to ``limit`` ``(size, size, 3)`` uint8 thumbnails of the pool's downloaded samples."""
    if not pool.has_images():
        raise PoolError(f"{pool.root}: no NNNNN.tar files; a copy encoder trains on images")
    shards = pool.shard_ids()
    order = np.random.default_rng(seed).permutation(len(shards))
    parts: list[np.ndarray] = []
    total = 0
    for i in order:
        shard = shards[i]
        rows = pool.read_samples(shard)
        if "key" not in rows.column_names or rows.num_rows == 0:
            continue
        keys = set(rows["key"].cast(pa.string()).to_pylist())
        thumbs, _ = shard_thumbnails(pool, shard, keys, size)
        if thumbs:
            parts.append(np.stack(list(thumbs.values()))[: limit - total])
            total += len(parts[-1])
        if total >= limit:
            break
    if not parts:
        raise PoolError(f"{pool.root}: no decodable image in any shard to train a copy encoder on")
    return np.concatenate(parts)


def train_encoder_on_pool(pool: str | Path, cfg: TrainEncoderConfig, out: str | Path) -> dict:
    """Fit an encoder on ``pool``'s thumbnails; write it to ``out`` and its figures to ``out``.json."""
    dest = storage.location(out)
    thumbs = pool_thumbnails(Pool(storage.location(pool)), cfg.thumb, cfg.max_images, cfg.seed)
    log.info("train-encoder: %d thumbnails of %dx%d, %d steps", len(thumbs), cfg.thumb, cfg.thumb, cfg.steps)
    with make_progress() as progress:
        task = progress.add_task("train-encoder", total=cfg.steps)
        fit = fit_encoder(thumbs, cfg, progress=lambda _step: progress.advance(task))
    report = {
        "encoder": storage.url(dest),
        "images": len(thumbs),
        "seconds": round(fit.seconds, 1),
        "losses": fit.losses,
        "view_top1": round(fit.view_top1, 4),
        "config": cfg.model_dump(mode="json"),
    }
    save_encoder(fit.model, dest, {k: v for k, v in report.items() if k != "encoder"}, cfg.thumb)
    atomic_write_json(dest.with_suffix(".json"), report)
    return report
