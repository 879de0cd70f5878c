"""Seeded randomness that does not depend on chunking or worker count.

Every item draws from its own generator, keyed by (master seed, stream, index); a set-level plan
(who is junk, which class) draws from the stream's plan generator. Streams keep the crawl, the
duplicates and each held-out set independent, so growing one never changes another.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_PLAN = 2**40  # beyond any item index: the plan generator of a stream


def item_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one item."""
    return np.random.default_rng([seed, stream, index])


def plan_rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of a stream's set-level decisions."""
    return np.random.default_rng([seed, stream, _PLAN])


def allocate_exact(n: int, weights: Sequence[float] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``weights`` in exact proportions (largest remainder), shuffled."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    want = w / w.sum() * n
    counts = np.floor(want).astype(np.int64)
    counts[np.argsort(-(want - counts), kind="stable")[: n - int(counts.sum())]] += 1
    return rng.permutation(np.repeat(np.arange(len(w)), counts))
