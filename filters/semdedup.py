"""SemDeDup: semantic deduplication by k-means, then pruning near pairs inside each cluster.

A global filter (see :mod:`curation.filtering.global_view`). Phase 1 streams every shard's
embeddings (``embeddings: {attribute, column}``) into one float16 file in its folder, clusters
them and computes each sample's ``max_sim`` (:mod:`curation.filtering.semdedup`: its highest cosine
to a member of its cluster ordered before it, the member farthest from the centroid first, as the
paper keeps). Phase 2 drops a sample as ``semantic_duplicate`` when ``max_sim > 1 - eps`` for the
first value of ``eps``; every further value gets its own ``<name>_keep_eps<eps>`` column (not a
``_keep`` verdict, so ``filter`` selection steps use only the first), and ``<name>_max_sim`` lets
any other threshold be selected later (``threshold: {score: STAGE:<name>_max_sim, max: 0.95}``)
without clustering again. A sample without a usable embedding is dropped as ``missing_embedding``.

Phase 1 writes into a local folder (:func:`~curation.filtering.global_view.run_prepare` uploads it
for a pool on object storage); the per-cluster pass's scratch goes to the shared work folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curation.core.io import atomic_write_json
from curation.core.pool import Pool
from curation.core.stage import ConfiguredFilter, Verdict, filter_kind
from curation.filtering.embeddings import EmbeddingRef, embedding_matrix
from curation.filtering.global_view import (
    GlobalFilter,
    gather_shards,
    read_aligned,
    uid_keys,
    write_shard_lookups,
)
from curation.filtering.semdedup import EmbeddingWriter, SemDedupParams, semdedup

LOOKUP_SCHEMA = pa.schema(
    [("uid", pa.string()), ("cluster", pa.int32()), ("max_sim", pa.float32()), ("nearest", pa.string())]
)
EMBEDDING_FILE = "embeddings.f16"


class SemDedupConfig(ConfiguredFilter):
    embeddings: EmbeddingRef = EmbeddingRef()
    eps: list[float] = Field(default_factory=lambda: [0.05], min_length=1)  # first: the verdict
    k: int = Field(100, ge=1)  # clusters; about n / 1,000 to n / 10,000 (SemDeDup: 50,000 for 440M)
    niter: int = 20
    seed: int = 0
    max_points_per_centroid: int = 256
    keep_embeddings: bool = False  # keep the float16 copy of the embeddings in the phase-1 folder
    cluster_groups: int = Field(64, ge=1)  # shards of the per-cluster pass on the engine


def eps_label(eps: float) -> str:
    return f"{eps:g}"


@filter_kind("semdedup", SemDedupConfig)
class SemDedupFilter(GlobalFilter):
    lookup_columns = ("cluster", "max_sim", "nearest")

    def __init__(self, cfg: SemDedupConfig) -> None:
        super().__init__(cfg)
        self.cfg: SemDedupConfig = cfg
        bad = [e for e in cfg.eps if not 0 < e < 2]
        if bad:
            raise ValueError(f"filter {self.name}: eps must be in (0, 2) (a cosine distance), got {bad}")

    def prepare(self, pool: Pool, out: Path) -> None:
        shards, uids, valid = [], [], []
        writer: EmbeddingWriter | None = None
        read = lambda s: pool.read_samples(s)["uid"].combine_chunks()  # noqa: E731
        for _, shard, shard_uids in gather_shards(pool, read, f"{self.name}: embeddings"):
            vectors, ok = embedding_matrix(read_aligned(pool, shard, self.cfg.embeddings, shard_uids))
            if ok.any():
                writer = writer or EmbeddingWriter(out / EMBEDDING_FILE, vectors.shape[1])
                writer.append(vectors[ok])
            shards.append(shard)
            uids.append(shard_uids)
            valid.append(ok)
        all_uids = pa.concat_arrays(uids) if uids else pa.array([], pa.string())
        ok = np.concatenate(valid) if valid else np.zeros(0, bool)
        rows = np.flatnonzero(ok)
        kept_uids = all_uids.take(pa.array(rows, pa.int64()))
        shard_of = np.concatenate([np.full(len(u), i, np.int32) for i, u in enumerate(uids)]) if uids else []
        if writer is None:
            res_cluster, res_max, nearest_uid = [], [], pa.array([], pa.string())
        else:
            emb = writer.close()
            c = self.cfg
            params = SemDedupParams(c.k, c.niter, c.seed, c.max_points_per_centroid)
            work = self.shared_dir or out  # where the engine's workers see it (a URL for a remote pool)
            res = semdedup(emb, params, uid_keys(kept_uids), self.schedule, work, c.cluster_groups)
            np.save(out / "centroids.npy", res.centroids)
            res_cluster, res_max = res.cluster, res.max_sim
            nearest_uid = pc.if_else(
                pa.array(res.nearest >= 0), kept_uids.take(pa.array(np.maximum(res.nearest, 0))), None
            )
            atomic_write_json(
                out / "eps_counts.json",
                {eps_label(e): int((res.max_sim > 1 - e).sum()) for e in c.eps} | {"searched": emb.n},
            )
            if not c.keep_embeddings:
                (out / EMBEDDING_FILE).unlink()
            for scratch in ("order.npy", "bounds.npy"):
                (out / scratch).unlink(missing_ok=True)
            shutil.rmtree(out / "clusters", ignore_errors=True)
        table = pa.table(
            {
                "shard": pa.array(shards, pa.string()).take(pa.array(np.asarray(shard_of)[rows], pa.int32())),
                "uid": kept_uids,
                "cluster": pa.array(res_cluster, pa.int32()),
                "max_sim": pa.array(res_max, pa.float32()),
                "nearest": nearest_uid,
            }
        )
        write_shard_lookups(out, shards, table.to_batches(), LOOKUP_SCHEMA)

    def _duplicate(self, batch: pa.RecordBatch, eps: float) -> np.ndarray:
        max_sim = pc.fill_null(batch.column(self.input_column("max_sim")), -1.0)
        return max_sim.to_numpy(zero_copy_only=False) > np.float32(1.0 - eps)

    def _missing(self, batch: pa.RecordBatch) -> np.ndarray:
        return batch.column(self.input_column("max_sim")).is_null().to_numpy(zero_copy_only=False)

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        return Verdict.from_rules(
            batch.num_rows,
            [
                ("missing_embedding", self._missing(batch)),
                ("semantic_duplicate", self._duplicate(batch, self.cfg.eps[0])),
            ],
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        missing = self._missing(batch)
        cols = {
            f"{self.name}_cluster": batch.column(self.input_column("cluster")),
            f"{self.name}_max_sim": batch.column(self.input_column("max_sim")),
            f"{self.name}_nearest": batch.column(self.input_column("nearest")),
        }
        for eps in self.cfg.eps[1:]:
            cols[f"{self.name}_keep_eps{eps_label(eps)}"] = pa.array(~missing & ~self._duplicate(batch, eps))
        return cols
