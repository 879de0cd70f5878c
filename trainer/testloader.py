"""Stream a webdataset test split through a model in batches, accounting for every sample.

Decoding and preprocessing run in DataLoader workers (webdataset splits shards across them).
A sample that cannot be used (no image, an undecodable image, a missing or malformed label or
caption) is not dropped silently: it is returned with its reason, counted in the result record,
and its key is kept, so ``n_used + sum(skipped) == samples in the tars`` always holds.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from curation.core.progress import bar
from trainer.suites import IMAGE_EXTENSIONS, count_samples

log = logging.getLogger(__name__)

NEEDS_LABEL = "label"
NEEDS_CAPTION = "caption"


@dataclass
class Batch:
    images: torch.Tensor  # only the decodable samples, in order
    keys: list[str]  # every sample of the batch
    labels: list[int]  # -1 where absent
    captions: list[list[str]]
    problems: list[str | None]  # None: usable; else the reason it is skipped


class _Decoder:
    """Turn one raw webdataset sample into (image tensor | None, key, label, captions, problem)."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor], needs: str) -> None:
        self.preprocess = preprocess
        self.needs = needs

    def __call__(self, sample: dict[str, Any]) -> tuple[Any, ...]:
        key = f"{Path(str(sample.get('__url__', ''))).name}/{sample['__key__']}"
        label, captions, problem = -1, [], None
        if "cls" in sample:
            try:
                label = int(bytes(sample["cls"]).decode().strip())
            except ValueError:
                problem = "bad_label"
        if "txt" in sample:
            text = bytes(sample["txt"]).decode("utf-8", errors="replace")
            captions = [c.strip() for c in text.splitlines() if c.strip()]
        if problem is None and self.needs == NEEDS_LABEL and label < 0:
            problem = "no_label"
        if problem is None and self.needs == NEEDS_CAPTION and not captions:
            problem = "no_caption"
        image = None
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            problem = problem or "no_image"
        elif problem is None:
            try:
                with Image.open(io.BytesIO(sample[ext])) as img:
                    image = self.preprocess(img.convert("RGB"))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                problem = "undecodable_image"
        return image, key, label, captions, problem


def _collate(rows: list[tuple[Any, ...]]) -> Batch:
    images = [r[0] for r in rows if r[4] is None]
    stacked = torch.stack(images) if images else torch.empty(0)
    return Batch(
        stacked, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows]
    )


def make_loader(
    shards: Sequence[Path],
    preprocess: Callable[[Image.Image], torch.Tensor],
    needs: str,
    batch_size: int,
    workers: int,
) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` over ``shards`` in a fixed order (no shuffling)."""
    dataset = (
        wds.WebDataset([str(s) for s in shards], shardshuffle=False)
        .map(_Decoder(preprocess, needs))
        .batched(batch_size, collation_fn=_collate, partial=True)
    )
    workers = min(workers, len(shards))  # a worker without a shard would sit idle
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)


@dataclass
class PassResult:
    """What one pass over a split yields; ``outputs`` rows align with ``keys``/``labels``/``captions``."""

    outputs: torch.Tensor
    keys: np.ndarray
    labels: np.ndarray
    captions: list[list[str]]
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_keys: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.keys)

    def sorted_by_key(self) -> PassResult:
        """Deterministic row order whatever the worker interleaving was (pairs models sample by sample)."""
        order = np.argsort(self.keys, kind="stable")
        return PassResult(
            self.outputs[torch.from_numpy(order)],
            self.keys[order],
            self.labels[order],
            [self.captions[i] for i in order],
            self.skipped,
            sorted(self.skipped_keys),
        )


def run_pass(
    forward: Callable[[torch.Tensor], torch.Tensor],
    shards: Sequence[Path],
    preprocess: Callable[[Image.Image], torch.Tensor],
    needs: str,
    batch_size: int,
    workers: int,
    description: str,
) -> PassResult:
    """Run ``forward`` (images -> rows of float outputs) over every usable sample of ``shards``."""
    total = count_samples(shards)
    loader = make_loader(shards, preprocess, needs, batch_size, workers)
    outputs: list[torch.Tensor] = []
    keys: list[str] = []
    labels: list[int] = []
    captions: list[list[str]] = []
    skipped: Counter[str] = Counter()
    skipped_keys: list[tuple[str, str]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with bar(*columns, transient=True) as progress, torch.inference_mode():
        task = progress.add_task(description, total=total)
        for batch in loader:
            if len(batch.images):
                outputs.append(forward(batch.images).float().cpu())
            for key, label, caps, problem in zip(
                batch.keys, batch.labels, batch.captions, batch.problems, strict=True
            ):
                if problem is None:
                    keys.append(key)
                    labels.append(label)
                    captions.append(caps)
                else:
                    skipped[problem] += 1
                    skipped_keys.append((key, problem))
            progress.advance(task, len(batch.keys))
    seen = len(keys) + sum(skipped.values())
    if seen != total:
        raise RuntimeError(f"{description}: tar headers list {total} samples but {seen} were read")
    if skipped:
        log.warning(
            "%s: skipped %d of %d samples: %s", description, sum(skipped.values()), total, dict(skipped)
        )
    stacked = torch.cat(outputs) if outputs else torch.empty(0)
    result = PassResult(
        stacked,
        np.asarray(keys, dtype=str),
        np.asarray(labels, dtype=np.int64),
        captions,
        skipped,
        skipped_keys,
    )
    return result.sorted_by_key()
