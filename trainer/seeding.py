"""Seeded data order for open_clip_train, so a seed fixes the run and a resumed run matches.

open_clip_train 3.3 is not deterministic for a seed: its sample shuffle
(``wds.shuffle(bufsize, initial)``) seeds itself from ``pid + time``; with ``--dataset-resampled``
and no loader workers the shard draw seeds from ``rank * 1000 + worker`` (every epoch and every
seed draw the same shards); and augmentation draws come from a worker RNG that is not saved in
checkpoints, so an epoch after ``--resume`` sees different crops than the same epoch of an
uninterrupted run. Two same-seed runs on CPU differed by up to 0.018 in their weights after 8 steps
(docs/training.md). :func:`install` replaces those three seeds inside ``open_clip_train.data``,
in the training subprocess only: every random draw of a loader worker in an epoch is derived from
(seed, epoch, rank, worker). All patched objects are picklable, so spawned workers keep them.
"""

from __future__ import annotations

import hashlib
import random
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from open_clip_train import data as ocd
from webdataset.filters import _shuffle

PATCH_POINTS = ("SharedEpoch", "ResampledShards2", "wds")


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def worker_identity() -> tuple[int, int]:
    """(global rank, loader worker id) of the calling process."""
    rank, _world, worker, _workers = wds.utils.pytorch_worker_info()
    return rank, worker


def seed_worker_rngs(seed: int) -> None:
    """Reseed every RNG a data transform may draw from (torch, random, numpy) in this process."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class EpochSeededShuffle(wds.PipelineStage):
    """Sample shuffle buffer whose order, and the augmentations after it, depend on seed and epoch.

    ``epoch`` is any object with ``get_value()`` (open_clip_train's ``SharedEpoch``), read when an
    epoch's iteration starts, in the loader worker that runs it.
    """

    def __init__(self, bufsize: int, initial: int, seed: int, epoch: Any) -> None:
        self.bufsize = bufsize
        self.initial = initial
        self.seed = seed
        self.epoch = epoch

    def run(self, src: Iterator[Any]) -> Iterator[Any]:
        rank, worker = worker_identity()
        seed = mix_seed(self.seed, self.epoch.get_value(), rank, worker)
        seed_worker_rngs(seed)
        return _shuffle(src, self.bufsize, self.initial, random.Random(seed))


class WorkerSeed:
    """``worker_seed`` for ``ResampledShards2``: seed, rank and worker, never the torch RNG state."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self) -> int:
        return mix_seed(self.seed, *worker_identity())


class _Patch:
    """State of the installed patch: the run's seed and the most recent SharedEpoch created."""

    seed: int | None = None
    current_epoch: Any = None


class TrackedSharedEpoch(ocd.SharedEpoch):
    """open_clip_train's epoch counter, remembered when created so the shuffle built next can read it."""

    def __init__(self, epoch: int = 0) -> None:
        super().__init__(epoch)
        _Patch.current_epoch = self


class SeededResampledShards(ocd.ResampledShards2):
    """Shards drawn with replacement, seeded by (seed, rank, worker) + epoch."""

    def __init__(
        self,
        urls: Any,
        weights: Any = None,
        nshards: int = sys.maxsize,
        worker_seed: Any = None,
        deterministic: bool = True,
        epoch: Any = -1,
    ) -> None:
        if _Patch.seed is None:
            raise RuntimeError("trainer.seeding.install(seed) was not called")
        super().__init__(urls, weights, nshards, WorkerSeed(_Patch.seed), True, epoch)


def seeded_shuffle(bufsize: int = 1000, initial: int = 100, **_: Any) -> EpochSeededShuffle:
    """Stands in for ``wds.shuffle`` inside open_clip_train.data."""
    if _Patch.seed is None or _Patch.current_epoch is None:
        raise RuntimeError("open_clip_train built a sample shuffle before install() or its SharedEpoch")
    return EpochSeededShuffle(bufsize, initial, _Patch.seed, _Patch.current_epoch)


def install(seed: int) -> None:
    """Patch ``open_clip_train.data`` for this process (the training subprocess)."""
    missing = [name for name in PATCH_POINTS if not hasattr(ocd, name)]
    if missing:
        raise RuntimeError(
            f"open_clip_train.data has no {missing}: this open_clip_train version is not supported "
            "by trainer.seeding (tested with open_clip_torch 3.3)"
        )
    _Patch.seed = seed
    wds_proxy = types.ModuleType("webdataset_seeded")
    wds_proxy.__dict__.update(wds.__dict__)
    wds_proxy.shuffle = seeded_shuffle
    ocd.SharedEpoch = TrackedSharedEpoch
    ocd.ResampledShards2 = SeededResampledShards
    ocd.wds = wds_proxy
