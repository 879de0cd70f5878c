"""Image-text pairs of one pool shard, decoded and preprocessed in DataLoader worker processes.

The shard's tar is read member by member up to any damage (``curation.core.tarindex.iter_members``).
Each DataLoader worker takes every n-th sample of the tar (reading only its own members' bytes),
decodes the image and runs the PIL steps of the model's preprocess (resize, crop, RGB; for most
JPEGs their tensor twins on torchvision's decoder, see :class:`PairDecoder`), and hands the main
process whole batches: a uint8 image tensor stacked straight into shared memory, a token tensor,
per-row status codes and keys. The rest of the preprocess (ToTensor and Normalize) is the same
arithmetic done once per batch on the model's device (:class:`ImagePrep`), not once per sample:
per-sample torch calls cost more than the decode on small images, and uint8 batches are a quarter
of the bytes to move.

A sample that cannot be used does not stop the shard: its image becomes zeros with status
``IMAGE_MISSING``, ``IMAGE_DECODE_ERROR`` or ``IMAGE_TOO_LARGE`` (a decompression bomb, or an image
whose resize to the model's input would be huge, is refused from its header, before any pixel is
decoded), an empty caption is flagged, and the job turns those flags into null scores with a
reason. A tar that is cut short yields every whole sample before the cut, then ends with a warning;
the job counts the samples it lost as ``truncated_tar``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor
from torchvision.transforms.v2 import functional as F
from webdataset.tariterators import base_plus_ext

from curation.core.tarindex import iter_groups

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode_format choices
IMAGE_OK, IMAGE_MISSING, IMAGE_DECODE_ERROR, IMAGE_TOO_LARGE = 0, 1, 2, 3
# Longer captions are cut before tokenizing: BPE of a megabyte-long caption costs seconds, and the
# model reads only its first context_length tokens (77): 8192 characters make far more tokens than
# that for any caption but a contrived one, so the cut leaves the model's input unchanged.
MAX_CAPTION_CHARS = 8192
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
FIRST_BATCH = 32  # per loader worker; later batches double up to the configured batch size


class PairBatch(NamedTuple):
    """One collated batch (a NamedTuple, so DataLoader's pin_memory pins its tensors)."""

    keys: list[str]
    images: torch.Tensor  # uint8 [B, H, W, 3], zeros where image_status != IMAGE_OK
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
        key, _ = base_plus_ext(fname)  # the key webdataset groups members by
        if key != self.key:
            self.key, self.index = key, self.index + 1
        return self.index % self.n == self.k


class PreprocessError(ValueError):
    """A model preprocess this stage cannot split into per-sample PIL steps and batched tensor steps."""


@dataclass(frozen=True)
class ImagePrep:
    """open_clip's eval preprocess ``[PIL steps..., ToTensor, Normalize]`` split at ToTensor.

    ``tensor_steps`` are the same PIL steps as torchvision ops on a uint8 ``[3, H, W]`` tensor
    (antialiased uint8 resize, crop), or None when a step has no tensor form.
    """

    pil_steps: Callable[[Image.Image], Image.Image]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]
    tensor_steps: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_preprocess(cls, preprocess: Any, size: tuple[int, int]) -> ImagePrep:
        steps = list(getattr(preprocess, "transforms", []))
        cut = next((i for i, t in enumerate(steps) if isinstance(t, ToTensor)), None)
        if cut is None or len(steps) != cut + 2 or not isinstance(steps[-1], Normalize):
            raise PreprocessError(f"expected [PIL transforms..., ToTensor, Normalize], got {preprocess}")
        norm = steps[-1]
        return cls(Compose(steps[:cut]), tuple(norm.mean), tuple(norm.std), size, _tensor_twin(steps[:cut]))

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]``: ToTensor and Normalize, batched.

        The same float operations in the same order as torchvision's per-image ones, so the result
        is identical to running the model's preprocess on each image.
        """
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        x = images.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        return x.sub_(mean).div_(std)


RGB_STEPS = ("_convert_to_rgb", "MaybeConvertMode")  # open_clip's mode conversions: torchvision decodes RGB


@dataclass(frozen=True)
class TensorSteps:
    """Resize and centre crop on a uint8 ``[3, H, W]`` tensor with torchvision's v2 kernels (the v1
    ``Resize`` module goes through float and cost 3.6x more on a 256-px image)."""

    steps: tuple[Resize | CenterCrop, ...]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for t in self.steps:
            if isinstance(t, Resize):
                img = F.resize(img, t.size, t.interpolation, t.max_size, antialias=t.antialias)
            else:
                img = F.center_crop(img, list(t.size))
        return img


def _tensor_twin(steps: list[Any]) -> TensorSteps | None:
    """The PIL steps as tensor ops, or None if one of them is not a Resize, CenterCrop or RGB step."""
    out = []
    for t in steps:
        if isinstance(t, Resize | CenterCrop):
            out.append(t)
        elif getattr(t, "__name__", type(t).__name__) not in RGB_STEPS:
            return None
    return TensorSteps(tuple(out))


@dataclass
class PairDecoder:
    """Turns a raw webdataset sample into ``(key, uint8 HWC image, image status, caption)``.

    JPEGs in RGB or greyscale (nearly all of a web pool) that need no DCT scaling are decoded by
    ``torchvision.io.decode_jpeg`` and resized by the tensor twins of the model's PIL steps (torch's
    uint8 antialiased resize): 1.4x less CPU than PIL's decode and resize, scores within 1e-4 of
    PIL's (``bench/jpeg_decoders.py``, docs/scoring.md). The rest (other formats and modes, DCT
    scaling under ``jpeg_draft``, what torchvision cannot decode) goes through PIL, which also gives
    the verdict on corrupt data.
    """

    prep: ImagePrep
    jpeg_draft: int | None = None  # see ScoreConfig.jpeg_draft
    max_pixels: int = Image.MAX_IMAGE_PIXELS  # PIL's own decompression-bomb warning threshold

    def __call__(self, sample: dict[str, Any]) -> tuple[str, np.ndarray, int, str]:
        image, status = self.image(sample)
        caption = (sample.get("txt") or b"").decode("utf-8", errors="replace").strip()
        return sample["__key__"], image, status, caption

    def image(self, sample: dict[str, Any]) -> tuple[np.ndarray, int]:
        data = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if data is None:
            return self.blank(), IMAGE_MISSING
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                if self.too_large(img.size):
                    log.debug("sample %s: image of %s pixels refused", sample.get("__key__"), img.size)
                    return self.blank(), IMAGE_TOO_LARGE
                out = self.decode_jpeg(data, sample.get("__key__")) if self.tensor_path(img) else None
                if out is None:
                    if self.jpeg_draft:
                        self.draft(img, self.jpeg_draft)
                    out = np.array(self.prep.pil_steps(to_rgb(img)))  # writable, as torch wants
        except Image.DecompressionBombError:  # PIL refuses past twice its limit already in open()
            return self.blank(), IMAGE_TOO_LARGE
        except Exception as exc:  # PIL raises many types for corrupt data; each one is a per-sample drop
            log.debug("sample %s: undecodable image: %s", sample.get("__key__"), exc)
            return self.blank(), IMAGE_DECODE_ERROR
        return self.checked(out), IMAGE_OK

    def tensor_path(self, img: Image.Image) -> bool:
        """An RGB or grey JPEG that ``jpeg_draft`` would not scale, and a preprocess with tensor twins."""
        return (
            img.format == "JPEG"
            and img.mode in ("RGB", "L")
            and self.prep.tensor_steps is not None
            and (not self.jpeg_draft or self.draft_scale(img.size) == 1)
        )

    def decode_jpeg(self, data: bytes, key: str | None) -> np.ndarray | None:
        """torchvision's decode and the tensor steps; None leaves the image to PIL (corrupt data)."""
        assert self.prep.tensor_steps is not None
        try:
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            log.debug("sample %s: torchvision cannot decode it (%s); trying PIL", key, exc)
            return None
        return np.ascontiguousarray(self.prep.tensor_steps(chw).permute(1, 2, 0).numpy())

    def checked(self, out: np.ndarray) -> np.ndarray:
        """A preprocess that does not give the model's input size is a bug to report, not a bad sample."""
        if out.shape != (*self.prep.size, 3):
            raise PreprocessError(
                f"preprocess gave an image of shape {out.shape}, not {(*self.prep.size, 3)}"
            )
        return out

    def draft_scale(self, size: tuple[int, int]) -> int:
        """The DCT scale PIL's ``draft`` picks: the largest of 8, 4, 2, 1 that keeps both sides at
        least ``jpeg_draft`` times the model input."""
        h, w = self.prep.size
        factor = self.jpeg_draft or 1
        fit = min(size[0] // (factor * w), size[1] // (factor * h))
        return next(s for s in (8, 4, 2, 1) if fit >= s or s == 1)

    def draft(self, img: Image.Image, factor: int) -> None:
        """JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT-domain, much cheaper) where the
        result stays at least ``factor`` times the model input on both sides; the model's own resize
        then does the rest. Smaller images, and other formats, decode exactly as without it.
        """
        h, w = self.prep.size
        img.draft("RGB", (factor * w, factor * h))

    def blank(self) -> np.ndarray:
        return np.zeros((*self.prep.size, 3), np.uint8)

    def too_large(self, size: tuple[int, int]) -> bool:
        """More pixels than ``max_pixels``, or an aspect so extreme that scaling its short side to
        the model's input would (a 60000x2 banner resizes to 6.7M x 224)."""
        w, h = size
        short = max(1, min(w, h))
        side = max(self.prep.size)
        return w * h > self.max_pixels or max(w, h) * side * side // short > self.max_pixels


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as open_clip's preprocess converts, except 16-bit greyscale, which PIL would clip to white."""
    if img.mode in SIXTEEN_BIT_MODES:
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))  # mode L
    return img.convert("RGB")


@dataclass
class PairCollate:
    """Stacks decoded samples into a :class:`PairBatch`, tokenizing the batch's captions at once."""

    tokenizer: Callable[[list[str]], torch.Tensor]

    def __call__(self, items: Sequence[tuple[str, np.ndarray, int, str]]) -> PairBatch:
        keys, images, status, captions = zip(*items, strict=True)
        return PairBatch(
            keys=list(keys),
            images=default_collate(images),  # in a worker: stacked straight into shared memory
            image_status=torch.tensor(status, dtype=torch.int8),
            tokens=self.tokenizer([c[:MAX_CAPTION_CHARS] for c in captions]),
            text_ok=torch.tensor([bool(c) for c in captions]),
        )


class TarPairs(IterableDataset):
    """Batches of one tar's decoded samples; each DataLoader worker takes every n-th sample.

    The first batch of each worker is small and the next ones double up to ``batch_size``: the model
    waits for one small batch at the start of a shard instead of a full one (one decode process,
    256-px JPEGs: 0.19 s instead of 0.53 s to the first batch; docs/scoring.md).
    """

    def __init__(self, tar: Path, decode: PairDecoder, collate: PairCollate, batch_size: int) -> None:
        super().__init__()
        self.tar, self.decode, self.collate, self.batch_size = tar, decode, collate, batch_size

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        items: list[tuple[str, np.ndarray, int, str]] = []
        size = min(FIRST_BATCH, self.batch_size)
        for sample in tar_samples(self.tar, _not_json(NthSample(k, n))):
            items.append(self.decode(sample))
            if len(items) == size:
                yield self.collate(items)
                items, size = [], min(2 * size, self.batch_size)
        if items:
            yield self.collate(items)


def tar_samples(tar: Path, select: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
    """webdataset-style samples (``__key__`` and one entry per lower-cased extension) of the members
    ``select`` picks, up to any damage: every whole sample before the damage comes out, the last
    one too (webdataset's grouping loses the sample it holds when its stream breaks)."""
    for key, files in iter_groups(tar, _key_ext, select=select):
        yield {"__key__": key, **files}


def _key_ext(name: str) -> tuple[str | None, str]:
    key, ext = base_plus_ext(name)  # the key webdataset groups members by
    return key, (ext or "").lower()


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
        TarPairs(tar, decode, collate, s.batch_size),
        batch_size=None,  # the dataset batches (see TarPairs)
        collate_fn=_as_is,
        num_workers=s.workers,
        prefetch_factor=s.prefetch_factor if s.workers else None,
        pin_memory=s.pin_memory,
    )


def _as_is(batch: PairBatch) -> PairBatch:
    return batch
