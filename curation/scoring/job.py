"""The score job: every sample of a pool scored by one reference CLIP, one attribute file per shard.

Output: ``POOL/attributes/<column>/NNNNN.parquet`` keyed by ``uid`` with the cosine similarity in
``<column>`` (``clip_score_<model>`` unless ``--column`` says otherwise, so several reference
models score one pool side by side), ``<column>_reason`` (null when scored, else ``missing_image``,
``truncated_tar`` (the sample was lost where the shard's tar is cut short), ``decode_error``,
``image_too_large`` or ``missing_caption``), and optionally ``image_emb`` / ``text_emb`` (float16,
L2-normalised). ``_model.json`` in the same folder names the model the column was computed with,
so a resumed run cannot mix the scores of two checkpoints in one column.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.compute as pc
import torch

from curation.core import storage
from curation.core.config import ConfigError
from curation.core.io import atomic_write_json, atomic_write_parquet, read_json
from curation.core.pool import Pool, PoolError
from curation.core.runner import ShardJob
from curation.core.stage import Verdict
from curation.core.stats import StageStats
from curation.core.tarindex import tar_damage
from curation.core.workerslot import worker_slot
from curation.scoring.config import ScoreConfig
from curation.scoring.encode import EncodedShard, PairEncoder, encode_batches
from curation.scoring.loader import (
    IMAGE_DECODE_ERROR,
    IMAGE_MISSING,
    IMAGE_TOO_LARGE,
    ImagePrep,
    LoaderSettings,
    PairCollate,
    PairDecoder,
    pair_loader,
)
from curation.scoring.model import ModelSpec, resolve_devices, resolve_precision

log = logging.getLogger(__name__)

STAGE = "score"
MANIFEST = "_model.json"


@dataclass
class _Worker:
    """What ``setup`` builds once per worker process: the model and the loader's pieces."""

    encoder: PairEncoder
    decoder: PairDecoder
    collate: PairCollate
    loader: LoaderSettings
    describe: dict[str, Any]  # recorded in every attribute file: decides the scores
    runtime: dict[str, int]  # counted in the shard's stats: how it ran (device, threads, loaders)


class ScoreJob(ShardJob):
    """Cosine similarity of every image-text pair of ``pool`` under one reference model."""

    name = "score"
    costly_setup = True

    def __init__(self, pool: str | Path, cfg: ScoreConfig) -> None:
        self.pool = Pool(storage.location(pool))
        self.cfg = cfg
        self.column = cfg.score_column
        self.spec = ModelSpec(cfg.model, cfg.pretrained)
        self._worker: _Worker | None = None
        self._prepared = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_worker": None}  # workers load their own model in setup()

    def shards(self) -> list[str]:
        if not self.pool.has_images():
            raise PoolError(f"{self.pool.root}: no NNNNN.tar files; scoring needs a pool with images")
        return self.pool.shard_ids()

    def output_dir(self) -> Path:
        return self.pool.attributes_dir(self.column)

    def prepare(self) -> None:
        """Driver side, once: check the model, fetch a tag's weights, pin the column to this model."""
        if self._prepared:
            return
        self.spec.fetch()
        identity = {"column": self.column, **self.spec.identity()}
        path = self.output_dir() / MANIFEST
        if path.exists() and (previous := read_json(path)) != identity:
            raise ConfigError(
                f"{self.output_dir()} holds scores of {previous}, not of {identity}; "
                "score into another --column, or delete that folder to rescore"
            )
        atomic_write_json(path, identity)
        self._prepared = True

    def setup(self) -> None:
        slot = worker_slot()
        devices = resolve_devices(self.cfg.device)
        device = devices[slot.rank % len(devices)]
        loaders = self.cfg.loader_workers
        if loaders is None:
            loaders = default_loader_workers(slot.count, device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(self.cfg.threads or default_threads(slot.count, loaders))
        bundle = self.spec.load(device)
        prep = ImagePrep.from_preprocess(bundle.preprocess, _image_size(bundle.model))
        encoder = PairEncoder(bundle.model, prep, device, resolve_precision(self.cfg.precision, device))
        encoder.warm_up(bundle.tokenizer.context_length)
        # what decides the scores goes into each file's metadata; how this worker ran (which GPU,
        # threads, loaders: they follow the worker count) only into the log and the shard's stats
        describe = {
            "model": self.cfg.model,
            "pretrained": self.cfg.pretrained,
            "device": device.type,
            "precision": encoder.precision,
            "jpeg_draft": self.cfg.jpeg_draft,
        }
        threads = torch.get_num_threads() if device.type == "cpu" else 0
        runtime = {"device": str(device), "threads": threads, "loader_workers": loaders}
        log.info("score worker %d/%d: %s", slot.rank, slot.count, describe | runtime)
        self._worker = _Worker(
            encoder=encoder,
            decoder=PairDecoder(prep, self.cfg.jpeg_draft),
            collate=PairCollate(bundle.tokenizer),
            loader=LoaderSettings(
                self.cfg.batch_size, loaders, self.cfg.prefetch_factor, device.type == "cuda"
            ),
            describe=describe,
            runtime={f"shards_{k}_{v}": 1 for k, v in runtime.items()},
        )

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        if self._worker is None:
            self.setup()
        w = self._worker
        assert w is not None
        rows = self.pool.read_samples(shard)
        if "key" not in rows.column_names:
            raise PoolError(f"{self.pool.parquet_path(shard)}: no key column to find samples in the tar")
        tar = self.pool.tar_path(shard)
        has_tar = tar.exists()
        if rows.num_rows and not has_tar:
            raise PoolError(f"{tar} is missing but its parquet lists {rows.num_rows} downloaded samples")
        with contextlib.ExitStack() as stack:
            # the loader reads a local file by offset: a tar on object storage is copied here first
            local_tar = stack.enter_context(storage.local_copy(tar)) if has_tar else None
            batches = pair_loader(local_tar, w.decoder, w.collate, w.loader) if local_tar else []
            encoded = encode_batches(w.encoder, batches, self.cfg.embeddings)
            damaged = local_tar is not None and tar_damage(local_tar) is not None
        table, verdict = attribute_table(rows, encoded, self.column, damaged)
        meta = {"curation.score": json.dumps({"column": self.column, **w.describe})}
        atomic_write_parquet(staging / f"{shard}.parquet", table.replace_schema_metadata(meta))
        sources = rows["source"].to_numpy(zero_copy_only=False) if "source" in rows.column_names else None
        stats = StageStats.from_verdicts(STAGE, verdict.keep, verdict.reason, sources)
        stats.extra.update(encoded.seconds)
        stats.extra.update(w.runtime)  # e.g. shards_threads_4: 1 (sums to a count of shards per setting)
        seconds = encoded.seconds["seconds_encode"]
        log.info(
            "shard %s: %d pairs in %.1f s (%.0f pairs/s, %.0f%% waiting for data)",
            shard, len(encoded), seconds, len(encoded) / max(seconds, 1e-9),
            100 * encoded.seconds["seconds_data_wait"] / max(seconds, 1e-9),
        )  # fmt: skip
        return [stats]


def default_threads(engine_workers: int, loader_workers: int) -> int:
    """CPU threads of one model process: its share of the cores, less one per loader process.

    Oversubscribing cores costs far more than it gains: torch's OpenMP threads spin at barriers, so
    a loader that preempts one of them stalls them all (measured in docs/scoring.md).
    """
    return max(1, _cores() // engine_workers - loader_workers)


def default_loader_workers(engine_workers: int, device: torch.device) -> int:
    """Decode processes of one model process when the config leaves it to us.

    On a GPU decoding is the bottleneck: every core of this process's share decodes but one, which
    feeds the GPU. On a CPU one decode process beside the model's threads (the best split measured
    on 2 cores for tiny-vit and ViT-B-32; raise it when the log says the model waits for data).
    """
    share = _cores() // engine_workers
    return max(1, share - 1) if device.type == "cuda" else max(0, min(1, share - 1))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _image_size(model: Any) -> tuple[int, int]:
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    return (size, size) if isinstance(size, int) else tuple(size)


def attribute_table(
    rows: pa.Table, enc: EncodedShard, column: str, damaged_tar: bool = False
) -> tuple[pa.Table, Verdict]:
    """Join what the model computed (by tar key) onto every downloaded row of the shard's parquet.

    A row whose key is not in the tar counts as ``missing_image`` (``truncated_tar`` when the tar
    is cut short, so it was probably lost there); tar samples that the parquet does not list are not
    pool samples and are only logged.
    """
    n = rows.num_rows
    tar_keys = pa.array(enc.keys, pa.string())
    pos = pc.index_in(rows["key"].cast(pa.string()), value_set=tar_keys)
    found = pos.is_valid().to_numpy(zero_copy_only=False)
    idx = pos.fill_null(0).to_numpy(zero_copy_only=False)
    extra_in_tar = len(tar_keys) - pc.sum(pc.is_in(tar_keys, value_set=rows["key"].cast(pa.string()))).as_py()
    if len(tar_keys) and extra_in_tar:
        log.warning(
            "%d samples of the tar are not listed as downloaded in the parquet; ignored", extra_in_tar
        )
    status = np.where(found, _take(enc.image_status, idx, found), IMAGE_MISSING)
    text_ok = found & _take(enc.text_ok, idx, found)
    verdict = Verdict.from_rules(
        n,
        [
            ("truncated_tar", ~found & damaged_tar),
            ("missing_image", status == IMAGE_MISSING),
            ("decode_error", status == IMAGE_DECODE_ERROR),
            ("image_too_large", status == IMAGE_TOO_LARGE),
            ("missing_caption", ~text_ok),
        ],
    )
    image_ok = status == 0
    columns: dict[str, pa.Array] = {"uid": rows["uid"].combine_chunks()}
    if "source" in rows.column_names:
        columns["source"] = rows["source"].combine_chunks()
    columns[column] = pa.array(_take(enc.score, idx, found), pa.float32(), mask=~verdict.keep)
    columns[f"{column}_reason"] = pa.array(list(verdict.reason), pa.string())
    if enc.image_emb is not None and enc.text_emb is not None:
        columns["image_emb"] = _embedding_array(_take(enc.image_emb, idx, found), image_ok)
        columns["text_emb"] = _embedding_array(_take(enc.text_emb, idx, found), text_ok)
    return pa.table(columns), verdict


def _take(values: np.ndarray, idx: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``values[idx]``, with zeros where the row was not found (also when ``values`` is empty)."""
    if len(values) == 0:
        return np.zeros((len(idx), *values.shape[1:]), values.dtype)
    out = values[idx]
    out[~found] = 0
    return out


def _embedding_array(emb: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Rows of a float16 matrix as a ``fixed_size_list<halffloat>[D]`` column, null where not valid."""
    values = pa.array(np.ascontiguousarray(emb, dtype=np.float16).ravel(), pa.float16())
    return pa.FixedSizeListArray.from_arrays(values, emb.shape[1], mask=pa.array(~valid))
