"""faiss indexes and k-means for the embedding filters (near duplicates, image-based clustering).

Kept in one module so faiss is configured in one place: its loader logs a traceback at INFO level
while probing for AVX2/AVX512 builds, which is noise in our logs, so that logger is raised to
WARNING before faiss is imported.
"""

from __future__ import annotations

import logging

import numpy as np

logging.getLogger("faiss.loader").setLevel(logging.WARNING)

import faiss  # noqa: E402


def inner_product_index(
    vectors: np.ndarray, kind: str = "flat", nlist: int | None = None, nprobe: int = 16, seed: int = 0
) -> faiss.Index:
    """An inner-product index over L2-normalised float32 rows: exact (``flat``) or inverted-file (``ivf``)."""
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        if nlist > n:
            raise ValueError(f"ivf index: nlist={nlist} is more than the {n} vectors to index")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        train = vectors if n <= nlist * 256 else vectors[rng.choice(n, nlist * 256, replace=False)]
        index.train(train)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}; use flat or ivf")
    index.add(vectors)
    return index


def kmeans(
    vectors: np.ndarray, k: int, niter: int, seed: int, spherical: bool, max_points_per_centroid: int
) -> np.ndarray:
    """k-means centroids (``k`` x dim, float32), deterministic for a seed."""
    n, dim = vectors.shape
    if n < k:
        raise ValueError(f"k={k} clusters but only {n} embeddings to cluster; lower k")
    km = faiss.Kmeans(
        dim,
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        max_points_per_centroid=max_points_per_centroid,
        verbose=False,
    )
    km.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest_centroid(centroids: np.ndarray, vectors: np.ndarray, spherical: bool) -> np.ndarray:
    """Index of each row's nearest centroid (inner product for spherical k-means, else L2)."""
    dim = centroids.shape[1]
    index = faiss.IndexFlatIP(dim) if spherical else faiss.IndexFlatL2(dim)
    index.add(centroids)
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0].astype(np.int64)
