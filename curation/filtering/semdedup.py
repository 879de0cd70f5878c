"""SemDeDup (Abbas et al. 2023): k-means over embeddings, then prune near pairs inside each cluster.

The algorithm, as the paper's code does it: cluster the L2-normalised embeddings with spherical
k-means; inside each cluster order the members by cosine to the centroid, *least* similar first
(the paper's ``keep_hard``), and for each member ``j`` take ``max_sim[j]``, its highest cosine to a
member before it. A member is a duplicate at threshold ``eps`` when ``max_sim > 1 - eps``, so the
first member of every group of near pairs (the one farthest from the centroid) survives, and every
``eps`` is read off the same ``max_sim`` without recomputing anything.

Out of core: the embeddings are written once to a float16 file; k-means trains on a seeded sample
of at most ``k * max_points_per_centroid`` rows; assignment streams the file in blocks; clusters
are processed one at a time, reading only their own rows through a mapping opened and closed per
cluster, and a cluster's similarity rows are computed in blocks, so memory is bounded by the
largest cluster's block, not by the pool. Given a scheduler, the per-cluster pass runs on an engine
as a shard job whose shards are ranges of clusters of about equal work (:class:`ClusterJob`). Its
work folder may be a URL (a pool on object storage, workers without a shared disk): each range's
rows are then uploaded as their own small file, so a worker downloads only what it prunes.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from upath import UPath

from curation.core import storage
from curation.core.runner import ShardJob
from curation.core.stats import Counts, StageStats
from curation.filtering.faiss_index import kmeans, nearest_centroid

log = logging.getLogger(__name__)

BLOCK_ROWS = 65536  # rows per block when streaming the embedding file
SIM_BLOCK = 1 << 24  # similarity-matrix entries computed at once inside a cluster (64 MiB of float32)
COLUMN_BLOCK = 512  # columns per block: blocks skip most of the lower triangle of a large cluster


@dataclass
class EmbeddingFile:
    """An ``(n, dim)`` float16 matrix on disk, written once, read in row blocks or by row index."""

    path: Path
    n: int
    dim: int

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (any order) as float32; the mapping is dropped afterwards so memory stays flat."""
        if len(index) == 0:
            return np.zeros((0, self.dim), np.float32)
        mm = np.memmap(self.path, dtype=np.float16, mode="r", shape=(self.n, self.dim))
        try:
            order = np.argsort(index, kind="stable")
            out = np.empty((len(index), self.dim), np.float32)
            out[order] = mm[index[order]]
            return out
        finally:
            del mm

    def blocks(self, size: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` blocks in file order, as float32."""
        for start in range(0, self.n, size):
            yield start, self.rows(np.arange(start, min(self.n, start + size)))


class EmbeddingWriter:
    """Append float32 rows to a float16 file; :meth:`close` returns the :class:`EmbeddingFile`."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim, self.n = path, dim, 0
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1] != self.dim:
            raise ValueError(f"embedding rows of size {rows.shape[1]}, expected {self.dim}")
        self._f.write(np.ascontiguousarray(rows, dtype=np.float16).tobytes())
        self.n += len(rows)

    def close(self) -> EmbeddingFile:
        self._f.close()
        return EmbeddingFile(self.path, self.n, self.dim)


@dataclass
class SemDedupParams:
    k: int = 100  # clusters (SemDeDup used 50,000 for LAION-440M: about 10^4 samples per cluster)
    niter: int = 20
    seed: int = 0
    max_points_per_centroid: int = 256  # k-means trains on at most k * this many sampled rows


@dataclass
class SemDedupResult:
    """Per row of the embedding file: cluster, cosine to its centroid, ``max_sim`` (-1 for the first
    member of a cluster) and the row it is most similar to among those before it (-1 if none)."""

    cluster: np.ndarray
    centroid_sim: np.ndarray
    max_sim: np.ndarray
    nearest: np.ndarray
    centroids: np.ndarray


def train_centroids(emb: EmbeddingFile, params: SemDedupParams) -> np.ndarray:
    """Spherical k-means centroids from a seeded sample of the file's rows."""
    k = min(params.k, emb.n)
    budget = k * params.max_points_per_centroid
    rng = np.random.default_rng(params.seed)
    sample = np.sort(rng.choice(emb.n, budget, replace=False)) if emb.n > budget else np.arange(emb.n)
    return kmeans(emb.rows(sample), k, params.niter, params.seed, True, params.max_points_per_centroid)


def assign(emb: EmbeddingFile, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row and the cosine to it, streamed in blocks."""
    cluster = np.empty(emb.n, np.int32)
    sim = np.empty(emb.n, np.float32)
    for start, rows in emb.blocks():
        c = nearest_centroid(centroids, rows, spherical=True)
        cluster[start : start + len(rows)] = c
        sim[start : start + len(rows)] = np.einsum("ij,ij->i", rows, centroids[c])
    return cluster, sim


def earlier_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows in order: each row's highest cosine to a row before it, and that row (-1, -1 for row 0).

    The strict upper triangle of ``x @ x.T``, column maxima, a block of ``COLUMN_BLOCK`` columns at a
    time against only the rows before the block's end (about half the full product).
    """
    n = len(x)
    best = np.full(n, -1.0, np.float32)
    arg = np.full(n, -1, np.int64)
    step = max(1, min(COLUMN_BLOCK, SIM_BLOCK // max(1, n)))
    for start in range(1, n, step):
        stop = min(n, start + step)
        sims = x[:stop] @ x[start:stop].T  # rows: candidates before, columns: this block
        sims[np.arange(stop)[:, None] >= np.arange(start, stop)[None, :]] = -np.inf
        a = sims.argmax(axis=0)
        best[start:stop] = np.maximum(sims[a, np.arange(stop - start)], -1.0)
        arg[start:stop] = a
    return best, arg


def prune_range(
    emb: EmbeddingFile, order: np.ndarray, bounds: np.ndarray, c0: int, c1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, max_sim, nearest row)`` of the members of clusters ``c0 .. c1 - 1``, one cluster at a time."""
    rows, sims, nearest = [], [], []
    for c in range(c0, c1):
        members = order[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        best, arg = earlier_max(emb.rows(members))
        rows.append(members)
        sims.append(best)
        nearest.append(np.where(arg >= 0, members[np.maximum(arg, 0)], -1))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(sims), np.concatenate(nearest)


def cluster_groups(bounds: np.ndarray, n_groups: int) -> list[tuple[int, int]]:
    """Contiguous ranges of clusters with about equal pairwise work (the sum of squared sizes)."""
    cost = np.cumsum(np.diff(bounds).astype(np.float64) ** 2)
    k = len(cost)
    if k == 0:
        return []
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, n_groups) / n_groups, side="right")
    edges = np.unique(np.concatenate([[0], np.clip(cuts, 1, k), [k]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


class ClusterJob(ShardJob):
    """The per-cluster pass as shard work: each "shard" is a range of clusters (:func:`cluster_groups`),
    so any engine runs it; workers read the embedding file and the cluster order from ``work``.

    Where ``work`` is a URL, workers read their range's rows from ``work/groups/<shard>.f16`` and
    their row numbers from ``work/groups/<shard>.npy`` instead (:meth:`upload_groups`)."""

    name = "semdedup-clusters"

    def __init__(self, work: Path | UPath, emb: EmbeddingFile, groups: list[tuple[int, int]]) -> None:
        self.work, self.emb, self.groups = storage.location(work), emb, groups

    def shards(self) -> list[str]:
        return [f"g{i:05d}" for i in range(len(self.groups))]

    def output_dir(self) -> UPath:
        return self.work / "clusters"

    def upload_groups(self, order: np.ndarray, bounds: np.ndarray) -> None:
        """Driver side, for a remote ``work``: the cluster bounds, and each range's rows and row numbers."""
        storage.write_bytes(self.work / "bounds.npy", storage.npy_bytes(bounds))
        for shard, (c0, c1) in zip(self.shards(), self.groups, strict=True):
            mine = np.ascontiguousarray(order[bounds[c0] : bounds[c1]])
            storage.write_bytes(self.work / "groups" / f"{shard}.npy", storage.npy_bytes(mine))
            rows = np.ascontiguousarray(self.emb.rows(mine), dtype=np.float16)  # float16 -> 32 -> 16: exact
            storage.write_bytes(self.work / "groups" / f"{shard}.f16", rows.tobytes())

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        c0, c1 = self.groups[int(shard[1:])]
        if storage.is_remote(self.work):
            bounds = storage.load_npy(self.work / "bounds.npy")
            rows, sims, nearest = self._prune_uploaded(shard, bounds, c0, c1)
        else:
            order = np.load(self.work / "order.npy", mmap_mode="r")
            bounds = np.load(self.work / "bounds.npy")
            mine = np.asarray(order[bounds[c0] : bounds[c1]])
            rows, sims, nearest = prune_range(self.emb, mine, bounds - bounds[c0], c0, c1)
        np.savez(staging / f"{shard}.npz", rows=rows, max_sim=sims, nearest=nearest)
        n = int(bounds[c1] - bounds[c0])
        return [StageStats(self.name, total=Counts(n, n))]

    def _prune_uploaded(
        self, shard: str, bounds: np.ndarray, c0: int, c1: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`prune_range` over this range's own file (row ``i`` is pool row ``mine[i]``)."""
        mine = storage.load_npy(self.work / "groups" / f"{shard}.npy")
        with storage.local_copy(self.work / "groups" / f"{shard}.f16") as path:
            local = EmbeddingFile(path, len(mine), self.emb.dim)
            rows, sims, near = prune_range(local, np.arange(len(mine)), bounds - bounds[c0], c0, c1)
        return mine[rows], sims, np.where(near >= 0, mine[np.maximum(near, 0)], -1)

    def load_result(self, shard: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, max_sim, nearest)`` a finished shard wrote."""
        path = self.output_dir() / f"{shard}.npz"
        with np.load(io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path) as z:
            return z["rows"], z["max_sim"], z["nearest"]


Scheduler = Callable[[ShardJob], Any]  # runs a shard job on an engine and returns its JobReport


def semdedup(
    emb: EmbeddingFile,
    params: SemDedupParams,
    tie_key: np.ndarray | None = None,
    schedule: Scheduler | None = None,
    work: Path | UPath | None = None,
    groups: int = 64,
) -> SemDedupResult:
    """SemDeDup's ``max_sim`` for every row; ``tie_key`` (e.g. uids) orders equal centroid distances.

    With ``schedule`` (and a ``work`` folder every worker sees: a local path or a URL) the
    per-cluster pass runs as a :class:`ClusterJob` of ``groups`` cluster ranges on an engine;
    otherwise here, cluster by cluster.
    """
    centroids = train_centroids(emb, params)
    cluster, centroid_sim = assign(emb, centroids)
    tie = tie_key if tie_key is not None else np.arange(emb.n)
    order = np.lexsort((tie, centroid_sim, cluster))  # by cluster, least similar to the centroid first
    bounds = np.searchsorted(cluster[order], np.arange(len(centroids) + 1))
    max_sim = np.full(emb.n, -1.0, np.float32)
    nearest = np.full(emb.n, -1, np.int64)
    if schedule is None or work is None:
        parts = [prune_range(emb, order, bounds, 0, len(centroids))]
    else:
        job = ClusterJob(work, emb, cluster_groups(bounds, groups))
        if storage.is_remote(job.work):
            job.upload_groups(order, bounds)
        else:
            np.save(job.work / "order.npy", order)
            np.save(job.work / "bounds.npy", bounds)
        report = schedule(job)
        if report.failed:
            failed = [(o.shard, o.error) for o in report.failed]
            raise RuntimeError(f"semdedup: {len(failed)} cluster groups failed: {failed[:3]}")
        parts = [job.load_result(shard) for shard in job.shards()]
    for rows, sims, near in parts:
        max_sim[rows] = sims
        nearest[rows] = near
    sizes = np.diff(bounds)
    log.info(
        "semdedup: %d rows in %d clusters (largest %d)", emb.n, len(centroids), int(sizes.max(initial=0))
    )
    return SemDedupResult(cluster, centroid_sim, max_sim, nearest, centroids)


def duplicate_mask(max_sim: np.ndarray, eps: float) -> np.ndarray:
    """SemDeDup's rule: a row is a duplicate when its ``max_sim`` exceeds ``1 - eps``."""
    return np.asarray(max_sim, np.float32) > np.float32(1.0 - eps)
