"""Image-based clustering (DataComp's "image-based" baseline): keep pool samples near a target set.

A global filter (see :mod:`curation.filtering.global_view`). Phase 1 clusters the pool's image embeddings
with faiss k-means (``k`` clusters, ``niter`` iterations, ``seed``), assigns every embedding of the
target set (e.g. the image embeddings of an in-distribution training set, a ``.npy`` matrix or a
parquet list column) to its nearest centroid, and marks those clusters as targets. Phase 2 keeps a
pool sample whose own nearest centroid is a target cluster; the others are dropped as
``off_target_cluster``, and ``<name>_id`` records each sample's cluster. A sample without a usable
embedding is dropped as ``missing_embedding``.

DataComp clusters L/14 image embeddings into 100,000 clusters (20 iterations, seed 0, no
subsampling) and targets ImageNet-1k train. Here embeddings are L2-normalised and, with
``spherical`` (default), so are the centroids, making "nearest" the same under cosine and L2;
``centroids.npy`` and ``target_clusters.json`` are kept in the phase-1 folder for inspection.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.io import atomic_write_json
from curation.core.pool import Pool
from curation.core.stage import ConfiguredFilter, Verdict, filter_kind
from curation.filtering.embeddings import EmbeddingRef, gather_embeddings, load_vectors
from curation.filtering.faiss_index import kmeans, nearest_centroid
from curation.filtering.global_view import GlobalFilter, write_shard_lookups

log = logging.getLogger(__name__)

LOOKUP_SCHEMA = pa.schema([("uid", pa.string()), ("cluster", pa.int64()), ("target", pa.bool_())])


class ImageClusterConfig(ConfiguredFilter):
    embeddings: EmbeddingRef = EmbeddingRef()
    # target-set image embeddings, a path or a URL: a .npy matrix, or parquet with ``target_column``
    target: storage.Location
    target_column: str = "image_emb"
    k: int = 100_000  # DataComp's number of clusters (for pools of 10M+ samples)
    niter: int = 20
    seed: int = 0
    max_points_per_centroid: int = 256  # faiss subsamples beyond k * this many points
    spherical: bool = True


@filter_kind("image_cluster", ImageClusterConfig)
class ImageClusterFilter(GlobalFilter):
    lookup_columns = ("cluster", "target")

    def __init__(self, cfg: ImageClusterConfig) -> None:
        super().__init__(cfg)
        self.cfg: ImageClusterConfig = cfg

    def prepare(self, pool: Pool, out: Path) -> None:
        targets = load_vectors(self.cfg.target, self.cfg.target_column)
        emb = gather_embeddings(pool, self.cfg.embeddings, f"{self.name}: embeddings")
        rows = emb.valid_rows()
        vectors = np.ascontiguousarray(emb.vectors[rows])
        if targets.shape[1] != vectors.shape[1]:
            raise ValueError(
                f"{self.cfg.target}: target embeddings have {targets.shape[1]} dimensions, "
                f"the pool's {vectors.shape[1]}; embed both with the same model"
            )
        c = self.cfg
        try:
            centroids = kmeans(vectors, c.k, c.niter, c.seed, c.spherical, c.max_points_per_centroid)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from exc
        cluster = nearest_centroid(centroids, vectors, c.spherical)
        target_clusters = np.unique(nearest_centroid(centroids, targets, c.spherical))
        is_target = np.isin(cluster, target_clusters)
        log.info(
            "%s: %d of %d clusters are targets; %d of %d pool samples in them",
            self.name,
            len(target_clusters),
            len(centroids),
            int(is_target.sum()),
            len(cluster),
        )
        np.save(out / "centroids.npy", centroids)
        atomic_write_json(
            out / "target_clusters.json", {"k": len(centroids), "targets": target_clusters.tolist()}
        )
        uids = emb.uids.take(pa.array(rows, pa.int64()))
        table = pa.table(
            {
                "shard": pa.array(emb.shards, pa.string()).take(pa.array(emb.shard_index[rows])),
                "uid": uids,
                "cluster": pa.array(cluster, pa.int64()),
                "target": pa.array(is_target, pa.bool_()),
            }
        )
        write_shard_lookups(out, emb.shards, table.to_batches(), LOOKUP_SCHEMA)

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        target = batch.column(self.input_column("target"))
        return Verdict.from_rules(
            batch.num_rows,
            [
                ("missing_embedding", target.is_null().to_numpy(zero_copy_only=False)),
                ("off_target_cluster", pc.invert(pc.fill_null(target, True)).to_numpy(zero_copy_only=False)),
            ],
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        return {f"{self.name}_id": batch.column(self.input_column("cluster"))}
