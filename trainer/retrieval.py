"""Zero-shot image-text retrieval: recall@k in both directions, CLIP-paper style.

Image retrieval (text -> image): a caption is a hit at k if its own image is among the k images
scored highest for it. Text retrieval (image -> text): an image is a hit at k if at least one of
its captions is among the k captions scored highest for it. These are CLIP_benchmark's
``image_retrieval_recall@k`` and ``text_retrieval_recall@k``. Ranks are computed exactly in blocks
(memory stays bounded, nothing is sorted); ties are broken by candidate index, like a stable sort,
where ``torch.topk`` would break them arbitrarily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 1024


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    image_rank: np.ndarray  # per caption: rank of its image among all images (0 = first)
    text_rank: np.ndarray  # per image: rank of its best caption among all captions


def first_positive_rank(scores: torch.Tensor, is_positive: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the first positive when candidates are sorted by descending score.

    Ties are broken by candidate index (a stable sort), so the result is deterministic and equals
    ``np.argsort(-scores, kind="stable")``'s order, without sorting.
    """
    index = torch.arange(scores.shape[1])[None, :]
    best = scores.masked_fill(~is_positive, float("-inf")).max(1, keepdim=True).values
    first = torch.where(is_positive & (scores == best), index, scores.shape[1]).min(1, keepdim=True).values
    return (scores > best).sum(1) + ((scores == best) & (index < first)).sum(1)


def _block_ranks(scores: torch.Tensor, pos_rows: torch.Tensor, pos_cols: torch.Tensor) -> torch.Tensor:
    """:func:`first_positive_rank` for positives given as (row, col) pairs, in two passes over ``scores``.

    The best positive score per row is gathered from ``scores`` itself (bit-identical), and the exact
    tie-break runs only on the rare rows where another candidate ties with it.
    """
    n_rows, n_cols = scores.shape
    best = torch.full((n_rows,), float("-inf"), dtype=scores.dtype)
    best = best.scatter_reduce(0, pos_rows, scores[pos_rows, pos_cols], reduce="amax")[:, None]
    rank = (scores > best).sum(1)
    tied = ((scores == best).sum(1) > 1).nonzero().squeeze(1)
    if len(tied):
        local = torch.full((n_rows,), -1, dtype=torch.long)
        local[tied] = torch.arange(len(tied))
        keep = local[pos_rows] >= 0
        is_positive = torch.zeros(len(tied), n_cols, dtype=torch.bool)
        is_positive[local[pos_rows[keep]], pos_cols[keep]] = True
        rank[tied] = first_positive_rank(scores[tied], is_positive)
    return rank


def retrieval_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the positives (0 = retrieved first); embeddings must already be L2-normalised."""
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    image_rank = torch.empty(n_texts, dtype=torch.long)
    for start in range(0, n_texts, BLOCK):
        stop = min(start + BLOCK, n_texts)
        scores = text_emb[start:stop] @ image_emb.T  # (block of captions, all images)
        rows = torch.arange(stop - start)
        image_rank[start:stop] = _block_ranks(scores, rows, text_image[start:stop])
    text_rank = torch.empty(n_images, dtype=torch.long)
    for start in range(0, n_images, BLOCK):
        stop = min(start + BLOCK, n_images)
        scores = image_emb[start:stop] @ text_emb.T  # (block of images, all captions)
        cols = ((text_image >= start) & (text_image < stop)).nonzero().squeeze(1)
        text_rank[start:stop] = _block_ranks(scores, text_image[cols] - start, cols)
    return image_rank.numpy(), text_rank.numpy()


def retrieval_metrics(
    image_emb: torch.Tensor,
    captions_emb: torch.Tensor,
    text_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalResult:
    """Recall@k both ways; ``text_image[j]`` is the image row of caption ``j``."""
    owners = torch.as_tensor(text_image, dtype=torch.long)
    if len(owners) == 0 or len(image_emb) == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if set(owners.tolist()) != set(range(len(image_emb))):
        raise ValueError("every image needs at least one caption and every caption an image")
    image_rank, text_rank = retrieval_ranks(image_emb.float(), captions_emb.float(), owners)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((image_rank < k).mean())
        metrics[f"text_retrieval_recall@{k}"] = float((text_rank < k).mean())
    return RetrievalResult(metrics, image_rank, text_rank)
