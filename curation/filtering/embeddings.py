"""Embedding columns (float16 lists written by the scoring stage) as L2-normalised float32 matrices.

Global filters that search or cluster embeddings (near duplicates, image-based clustering) read
them here, one shard at a time, into one matrix aligned to the pool's samples. A sample whose
embedding is absent, of the wrong length, non-finite or all zero is marked invalid rather than
dropped, so it can still be given a reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from curation.core import storage
from curation.core.pool import Pool
from curation.filtering.global_view import DEFAULT_SCORE, AttributeRef, ScoreRef, gather_shards, read_aligned


class EmbeddingRef(AttributeRef):
    """Where the embeddings live: ``POOL/attributes/<attribute>/NNNNN.parquet``, list column ``column``
    (the score stage stores ``image_emb`` beside its score)."""

    column: str = "image_emb"
    attribute: str | None = DEFAULT_SCORE


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, valid)``: an ``(n, d)`` float32 matrix, L2-normalised, and which rows are usable."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_list(arr.type) and not pa.types.is_fixed_size_list(arr.type):
        if pa.types.is_null(arr.type):
            return np.zeros((len(arr), 0), np.float32), np.zeros(len(arr), dtype=bool)
        raise TypeError(f"embeddings must be a list column, got {arr.type}")
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    else:
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        dim = int(np.bincount(lengths[valid]).argmax()) if valid.any() else 0
        valid &= lengths == dim
    vectors = np.zeros((len(arr), dim), dtype=np.float32)
    if valid.any():
        flat = pc.cast(arr.filter(pa.array(valid)).flatten(), pa.float32())
        vectors[valid] = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
    norms = np.linalg.norm(vectors, axis=1)
    with np.errstate(invalid="ignore"):
        valid &= np.isfinite(vectors).all(axis=1) & (norms > 0)
    vectors[valid] /= norms[valid, None]
    vectors[~valid] = 0.0
    return vectors, valid


@dataclass
class PoolEmbeddings:
    """Every pool sample's embedding, in shard order: uids, shard index, vectors, validity, optional score."""

    shards: list[str]
    uids: pa.Array
    shard_index: np.ndarray
    vectors: np.ndarray
    valid: np.ndarray
    scores: np.ndarray | None = None

    def valid_rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid)


def gather_embeddings(
    pool: Pool, ref: EmbeddingRef, description: str, prefer: ScoreRef | None = None
) -> PoolEmbeddings:
    """Read one embedding per pool sample over all shards (one shard's table in memory at a time)."""
    shards, uids, index, vectors, valid, scores = [], [], [], [], [], []
    for i, shard, shard_uids in gather_shards(pool, lambda s: pool.read_samples(s)["uid"], description):
        shard_uids = shard_uids.combine_chunks()
        v, ok = embedding_matrix(read_aligned(pool, shard, ref, shard_uids))
        shards.append(shard)
        uids.append(shard_uids)
        index.append(np.full(len(shard_uids), i, dtype=np.int32))
        vectors.append(v)
        valid.append(ok)
        if prefer is not None:
            score = read_aligned(pool, shard, prefer, shard_uids)
            scores.append(pc.cast(score, pa.float64()).to_numpy(zero_copy_only=False))
    dims = {v.shape[1] for v, ok in zip(vectors, valid, strict=True) if ok.any()}
    if len(dims) > 1:
        raise ValueError(f"{ref.stage}/{ref.column}: embeddings of different sizes across shards: {dims}")
    dim = dims.pop() if dims else 0
    vectors = [v if v.shape[1] == dim else np.zeros((len(v), dim), np.float32) for v in vectors]
    return PoolEmbeddings(
        shards=shards,
        uids=pa.concat_arrays(uids) if uids else pa.array([], pa.string()),
        shard_index=np.concatenate(index) if index else np.zeros(0, np.int32),
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
        valid=np.concatenate(valid) if valid else np.zeros(0, bool),
        scores=np.concatenate(scores) if prefer is not None and scores else None,
    )


def load_vectors(path: str | os.PathLike[str] | UPath, column: str = "image_emb") -> np.ndarray:
    """Embeddings from a ``.npy`` matrix or a parquet list column (a local path or a URL),
    L2-normalised, invalid rows removed."""
    path = storage.location(path)
    name = storage.url(path)
    try:
        if path.suffix == ".npy":
            matrix = storage.load_npy(path)
            if matrix.ndim != 2:
                raise ValueError(f"{name}: expected a 2-d matrix, got shape {matrix.shape}")
            flat = pa.array(matrix.astype(np.float32).ravel())
            vectors, valid = embedding_matrix(pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]))
        else:
            table = storage.read_parquet(path, columns=[column])
            vectors, valid = embedding_matrix(table[column])
    except FileNotFoundError:
        raise FileNotFoundError(f"embeddings file not found: {name}") from None
    if not valid.any():
        raise ValueError(f"{name}: no usable embeddings")
    return vectors[valid]
