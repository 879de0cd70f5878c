"""Quality heads on a pool: fit one from labelled examples, score every sample's stored embedding.

``train_head_on_pool`` (what ``curate train-head`` calls) reads the embeddings of the labelled
samples, holds out a seeded share of them by uid hash, fits :func:`curation.scoring.head.fit_head`
and writes the head (a torch state dict) with its held-out ROC AUC beside it. Labels are a column
of an attribute table (bool or numeric; a sample without a value is unlabelled) or a uid list of
positives (every other sample with an embedding is a negative).

:class:`HeadScoreJob` applies a head to every shard (any engine) and writes
``POOL/attributes/<name>/NNNNN.parquet`` with ``uid`` and the score ``<name>`` (null where the
sample has no usable embedding), ready for ``topk`` or ``threshold`` selection steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.io import atomic_write_json, atomic_write_parquet
from curation.core.pool import Pool
from curation.core.runner import ShardJob
from curation.core.stats import StageStats
from curation.filtering.embeddings import EmbeddingRef, embedding_matrix, gather_embeddings
from curation.filtering.global_view import AttributeRef, read_aligned
from curation.scoring.head import Activation, fit_head, holdout_mask, load_head, save_head


class TrainHeadConfig(ConfigModel):
    embeddings: EmbeddingRef = EmbeddingRef()
    labels: AttributeRef | None = None  # a label column of an attribute table
    positives: storage.Location | None = None  # or: a file of positive uids, one a line (path or URL)
    hidden: list[int] = Field(default_factory=lambda: [128])  # [] for a linear head
    holdout: float = Field(0.2, ge=0, lt=1)
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0


@dataclass
class TrainHeadReport:
    head_path: Path
    n_train: int
    n_holdout: int
    positives: int
    holdout_auc: float | None


def labelled_embeddings(pool: Pool, cfg: TrainHeadConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors, labels, uids) of the samples that have both an embedding and a label."""
    if (cfg.labels is None) == (cfg.positives is None):
        raise ValueError("train-head: give exactly one of labels (stage:column) or positives (a uid file)")
    emb = gather_embeddings(pool, cfg.embeddings, "train-head: embeddings")
    rows = emb.valid_rows()
    uids = pc.utf8_lower(emb.uids.take(pa.array(rows, pa.int64())))
    if cfg.positives is not None:
        with storage.storage_errors(cfg.positives, "read"):
            if not cfg.positives.is_file():
                raise FileNotFoundError(f"train-head: positives file {storage.url(cfg.positives)} not found")
        lines = storage.read_text(cfg.positives).splitlines()
        wanted = pa.array(sorted({ln.strip().lower() for ln in lines if ln.strip()}))
        labels = pc.is_in(uids, value_set=wanted).to_numpy(zero_copy_only=False).astype(np.float32)
        keep = np.ones(len(rows), bool)
    else:
        assert cfg.labels is not None
        parts = []
        for i, shard in enumerate(emb.shards):
            in_shard = emb.shard_index[rows] == i
            parts.append(
                read_aligned(pool, shard, cfg.labels, emb.uids.take(pa.array(rows[in_shard], pa.int64())))
            )
        col = (
            pa.concat_arrays([pc.cast(p, pa.float64()) for p in parts])
            if parts
            else pa.array([], pa.float64())
        )
        keep = col.is_valid().to_numpy(zero_copy_only=False)
        labels = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False).astype(np.float32)
    return (
        emb.vectors[rows][keep],
        labels[keep],
        [u for u, k in zip(uids.to_pylist(), keep, strict=True) if k],
    )


def train_head_on_pool(pool: str | Path, cfg: TrainHeadConfig, out: str | Path) -> TrainHeadReport:
    """Fit a head on a pool's labelled samples; write it to ``out`` and its figures to ``out``.json
    (``pool`` and ``out`` may be URLs)."""
    dest = storage.location(out)
    vectors, labels, uids = labelled_embeddings(Pool(storage.location(pool)), cfg)
    if len(vectors) == 0:
        raise ValueError("train-head: no sample has both an embedding and a label")
    held = holdout_mask(uids, cfg.holdout, cfg.seed)
    fit = fit_head(vectors, labels, held, cfg.hidden, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.seed)
    report = TrainHeadReport(
        dest, len(fit.train_rows), len(fit.holdout_rows), int((labels > 0).sum()), fit.holdout_auc
    )
    meta = {
        "embeddings": cfg.embeddings.model_dump(),
        "holdout_auc": fit.holdout_auc,
        "n_train": report.n_train,
    }
    save_head(fit.head, dest, meta)
    atomic_write_json(
        dest.with_suffix(".json"),
        {
            **meta,
            "config": cfg.model_dump(mode="json"),
            "positives": report.positives,
            "n_holdout": report.n_holdout,
        },
    )
    return report


class ScoreHeadConfig(ConfigModel):
    head: storage.Location  # a path or a URL
    embeddings: EmbeddingRef = EmbeddingRef()
    name: str = "quality"  # attribute stage and score column
    activation: Activation | None = None  # for a bare state dict (LAION's aesthetic MLP: none)


class HeadScoreJob(ShardJob):
    """A head's score for every sample of ``pool`` (see the module docstring)."""

    name = "score-head"

    def __init__(self, pool: str | Path, cfg: ScoreHeadConfig) -> None:
        self.pool = Pool(storage.location(pool))
        self.cfg = cfg
        self._head = None

    def shards(self) -> list[str]:
        return self.pool.shard_ids()

    def output_dir(self) -> Path:
        return self.pool.attributes_dir(self.cfg.name)

    def prepare(self) -> None:
        load_head(self.cfg.head, self.cfg.activation)  # a bad file fails before any shard runs

    def setup(self) -> None:
        self._head = load_head(self.cfg.head, self.cfg.activation)

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        start = time.perf_counter()
        if self._head is None:
            self.setup()
        assert self._head is not None
        uids = self.pool.read_samples(shard)["uid"].combine_chunks()
        vectors, ok = embedding_matrix(read_aligned(self.pool, shard, self.cfg.embeddings, uids))
        dim = self._head.config["dim"]
        if ok.any() and vectors.shape[1] != dim:
            raise ValueError(
                f"head {self.cfg.head} takes {dim}-d embeddings; "
                f"{self.cfg.embeddings.stage} has {vectors.shape[1]}"
            )
        score = np.full(len(uids), np.nan, np.float32)
        if ok.any():
            score[ok] = self._head.score(vectors[ok])
        table = pa.table({"uid": uids, self.cfg.name: pa.array(score, pa.float32(), mask=~ok)})
        atomic_write_parquet(staging / f"{shard}.parquet", table)
        stats = StageStats.from_verdicts(
            self.cfg.name, ok, np.where(ok, None, "missing_embedding").astype(object), None
        )
        stats.extra["seconds"] = time.perf_counter() - start
        return [stats]
