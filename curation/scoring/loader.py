"""Image-text pairs of one pool shard, decoded and preprocessed in DataLoader worker processes.

The shard's tar is read with webdataset's tar iterator. Each DataLoader worker takes every n-th
sample of the tar (reading only its own members' bytes), decodes the image with PIL, applies the
model's preprocess, and hands the main process whole batches: a stacked image tensor, a token
tensor, per-row status codes and keys. The main process then only moves tensors to the device
and runs the model; no per-sample Python work is left on its side of the pipe.

A sample that cannot be used does not stop the shard: its image becomes a zero tensor with status
``IMAGE_MISSING`` or ``IMAGE_DECODE_ERROR``, an empty caption is flagged, and the job turns those
flags into null scores with a reason.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode_format choices
IMAGE_OK, IMAGE_MISSING, IMAGE_DECODE_ERROR = 0, 1, 2


class PairBatch(NamedTuple):
    """One collated batch (a NamedTuple, so DataLoader's pin_memory pins its tensors)."""

    keys: list[str]
    images: torch.Tensor  # float [B, 3, H, W], zeros where image_status != IMAGE_OK
    image_status: torch.Tensor  # int8 [B]
    tokens: torch.Tensor  # long [B, context_length]
    text_ok: torch.Tensor  # bool [B]: caption present and not blank


class NthSample:
    """webdataset ``select_files`` predicate: the members of every ``n``-th sample, starting at ``k``.

    Members of one sample are adjacent in the tar, so counting key changes numbers the samples;
    members of other workers' samples are skipped before their bytes are copied out of the tar.
    """

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n = k, n
        self.index = -1
        self.key: str | None = None

    def __call__(self, fname: str) -> bool:
        key = fname.rsplit("/", 1)[-1].split(".", 1)[0]
        if key != self.key:
            self.key, self.index = key, self.index + 1
        return self.index % self.n == self.k


@dataclass
class PairDecoder:
    """Turns a raw webdataset sample into ``(key, image tensor, image status, caption)``."""

    preprocess: Callable[[Image.Image], torch.Tensor]
    image_size: tuple[int, int]
    fast_decode: bool = False

    def __call__(self, sample: dict[str, Any]) -> tuple[str, torch.Tensor, int, str]:
        image, status = self.image(sample)
        caption = (sample.get("txt") or b"").decode("utf-8", errors="replace").strip()
        return sample["__key__"], image, status, caption

    def image(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        data = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if data is None:
            return self.blank(), IMAGE_MISSING
        try:
            with Image.open(io.BytesIO(data)) as img:
                if self.fast_decode:
                    img.draft("RGB", self.image_size)  # JPEG: DCT-domain downscale, still >= image_size
                return self.preprocess(img.convert("RGB")), IMAGE_OK
        except Exception as exc:  # PIL raises many types for corrupt data; each one is a per-sample drop
            log.debug("sample %s: undecodable image: %s", sample.get("__key__"), exc)
            return self.blank(), IMAGE_DECODE_ERROR

    def blank(self) -> torch.Tensor:
        return torch.zeros(3, *self.image_size)


@dataclass
class PairCollate:
    """Stacks decoded samples into a :class:`PairBatch`, tokenizing the batch's captions at once."""

    tokenizer: Callable[[list[str]], torch.Tensor]

    def __call__(self, items: Sequence[tuple[str, torch.Tensor, int, str]]) -> PairBatch:
        keys, images, status, captions = zip(*items, strict=True)
        return PairBatch(
            keys=list(keys),
            images=default_collate(images),  # in a worker, stacks straight into shared memory (no copy)
            image_status=torch.tensor(status, dtype=torch.int8),
            tokens=self.tokenizer(list(captions)),
            text_ok=torch.tensor([bool(c) for c in captions]),
        )


class TarPairs(IterableDataset):
    """The decoded samples of one tar, split between DataLoader workers by sample index."""

    def __init__(self, tar: Path, decode: PairDecoder) -> None:
        super().__init__()
        self.tar, self.decode = tar, decode

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, int, str]]:
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        samples = wds.tarfile_samples([{"url": str(self.tar)}], select_files=_not_json(NthSample(k, n)))
        for sample in samples:
            yield self.decode(sample)


def _not_json(select: NthSample) -> Callable[[str], bool]:
    """Skip the per-sample JSON metadata (the pool parquet has it) but count its sample."""
    return lambda fname: select(fname) and not fname.endswith(".json")


@dataclass
class LoaderSettings:
    batch_size: int
    workers: int
    prefetch_factor: int
    pin_memory: bool


def pair_loader(tar: Path, decode: PairDecoder, collate: PairCollate, s: LoaderSettings) -> DataLoader:
    """A DataLoader over one tar; workers are started per shard (a fork costs milliseconds)."""
    return DataLoader(
        TarPairs(tar, decode),
        batch_size=s.batch_size,
        collate_fn=collate,
        num_workers=s.workers,
        prefetch_factor=s.prefetch_factor if s.workers else None,
        pin_memory=s.pin_memory,
    )
