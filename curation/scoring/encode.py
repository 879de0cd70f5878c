"""The model side of the score stage: batches in, normalised embeddings and cosine scores out.

:class:`PairEncoder` is also what ``bench/score_throughput.py`` times on in-memory tensors, so the
bench compares the full stage against exactly the forward pass the stage runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from curation.scoring.loader import ImagePrep, PairBatch
from curation.scoring.model import autocast


@dataclass
class PairEncoder:
    """One reference model on one device, at one precision."""

    model: Any
    prep: ImagePrep  # the tensor half of the model's preprocess, applied here per batch
    device: torch.device
    precision: str  # fp32 | fp16 | bf16 (autocast)
    embed_dim: int = 0  # set by warm_up

    def warm_up(self, context_length: int) -> None:
        """One tiny forward: learns the embedding width and pays one-time costs before timing starts."""
        images = torch.zeros(1, *self.prep.size, 3, dtype=torch.uint8)
        image_emb, _, _ = self(images, torch.zeros(1, context_length, dtype=torch.long))
        self.embed_dim = image_emb.shape[-1]

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 ``[B, H, W, 3]`` images and tokens -> normalised embeddings and cosine similarity (fp32)."""
        images = self.prep.to_model_input(images.to(self.device, non_blocking=True))
        tokens = tokens.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            image_emb = self.model.encode_image(images, normalize=True)
            text_emb = self.model.encode_text(tokens, normalize=True)
        score = (image_emb.float() * text_emb.float()).sum(dim=-1)
        return image_emb, text_emb, score


@dataclass
class EncodedShard:
    """Everything the model computed for a shard's tar, in the order the loader delivered it."""

    keys: list[str]
    image_status: np.ndarray  # int8, loader.IMAGE_* codes
    text_ok: np.ndarray  # bool
    score: np.ndarray  # float32
    image_emb: np.ndarray | None  # float16 [N, D]
    text_emb: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def encode_batches(encoder: PairEncoder, batches: Iterable[PairBatch], embeddings: bool) -> EncodedShard:
    """Run the encoder over every batch; results stay on the device until the shard ends (one sync)."""
    keys: list[str] = []
    status, text_ok, outputs = [], [], []
    waited = 0.0
    start = time.perf_counter()
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t0
        if batch is None:
            break
        image_emb, text_emb, score = encoder(batch.images, batch.tokens)
        outputs.append((image_emb.half(), text_emb.half(), score) if embeddings else (score,))
        keys += batch.keys
        status.append(batch.image_status)
        text_ok.append(batch.text_ok)
    cols = [torch.cat(c).cpu().numpy() for c in zip(*outputs, strict=True)] if outputs else []
    empty = np.zeros((0, encoder.embed_dim), np.float16)
    return EncodedShard(
        keys=keys,
        image_status=torch.cat(status).numpy() if status else np.zeros(0, np.int8),
        text_ok=torch.cat(text_ok).numpy() if text_ok else np.zeros(0, bool),
        score=cols[-1].astype(np.float32) if cols else np.zeros(0, np.float32),
        image_emb=(cols[0] if cols else empty) if embeddings else None,
        text_emb=(cols[1] if cols else empty) if embeddings else None,
        seconds={"seconds_encode": time.perf_counter() - start, "seconds_data_wait": waited},
    )
