"""Duplicate groups from embeddings: faiss k-NN search, a similarity threshold, connected components.

Two samples are linked when the cosine similarity of their L2-normalised embeddings is at least
``threshold``; groups are the connected components of those links (so a chain of near copies is
one group), and each group keeps one deterministic representative: the best score if one is
given, then the smallest uid. The search is exact (``IndexFlatIP``) for small pools, or an
inverted-file index (``IndexIVFFlat``, inner product) that probes ``nprobe`` of ``nlist`` lists for
large ones; both return each sample's ``k`` nearest neighbours, which bounds memory to ``n * k``
however many duplicates there are (a range search's result does not have that bound).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.filtering.faiss_index import inner_product_index

log = logging.getLogger(__name__)


@dataclass
class SearchParams:
    threshold: float = 0.95
    k: int = 16
    index: Literal["flat", "ivf"] = "flat"
    nlist: int | None = None  # ivf: default 4 * sqrt(n)
    nprobe: int = 16
    batch_size: int = 16384
    seed: int = 0


@dataclass
class Groups:
    """Per input row: its group label, the row index of its group's representative, group size and the
    similarity to its nearest other sample (NaN when there is none)."""

    label: np.ndarray
    rep: np.ndarray
    size: np.ndarray
    nn_sim: np.ndarray


def knn_pairs(vectors: np.ndarray, params: SearchParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` with cosine >= threshold among each row's k nearest, and each row's best cosine."""
    n = len(vectors)
    nn_sim = np.full(n, np.nan, dtype=np.float32)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), nn_sim
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = inner_product_index(vectors, params.index, params.nlist, params.nprobe, params.seed)
    k = min(params.k + 1, n)  # +1: a row usually finds itself
    rows, cols = [], []
    for start in range(0, n, params.batch_size):
        sims, nbrs = index.search(vectors[start : start + params.batch_size], k)
        own = np.arange(start, start + len(sims))[:, None]
        other = (nbrs >= 0) & (nbrs != own)
        best = np.where(other, sims, -np.inf).max(axis=1)
        nn_sim[start : start + len(sims)] = np.where(np.isfinite(best), best, np.nan)
        linked = other & (sims >= params.threshold)
        r, c = np.nonzero(linked)
        rows.append(r + start)
        cols.append(nbrs[r, c])
    return np.concatenate(rows), np.concatenate(cols).astype(np.int64), nn_sim


def representatives(label: np.ndarray, uid_key: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """Row index of each row's group representative: highest score (NaN last), then smallest uid."""
    n = len(label)
    if n == 0:
        return np.zeros(0, np.int64)
    neg_score = -score if score is not None else np.zeros(n)
    order = np.lexsort((uid_key, np.where(np.isnan(neg_score), np.inf, neg_score), label))
    first = np.ones(n, dtype=bool)
    first[1:] = label[order][1:] != label[order][:-1]
    rep_of_label = np.empty(label.max() + 1, dtype=np.int64)
    rep_of_label[label[order][first]] = order[first]
    return rep_of_label[label]


def near_duplicate_groups(
    vectors: np.ndarray, uid_key: np.ndarray, params: SearchParams, score: np.ndarray | None = None
) -> Groups:
    """Connected groups of rows whose embeddings are within ``params.threshold`` cosine of each other."""
    n = len(vectors)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Groups(label=empty, rep=empty, size=empty, nn_sim=np.zeros(0, np.float32))
    rows, cols, nn_sim = knn_pairs(vectors, params)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    rep = representatives(label, uid_key, score)
    size = np.bincount(label)[label]
    log.info("near dedup: %d rows, %d links, %d in groups of 2+", n, len(rows), int((size > 1).sum()))
    return Groups(label=label, rep=rep, size=size, nn_sim=nn_sim)
