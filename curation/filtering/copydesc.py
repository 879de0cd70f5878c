"""A copy-detection image descriptor: what near dedup searches instead of a semantic CLIP embedding.

A CLIP embedding says what an image shows, so two different drawings of one concept land almost on
top of each other and a cosine threshold merges them (measured on the synthetic crawl: 90% of
samples falsely merged; docs/filters.md). A copy (re-encoded, resized, slightly cropped) keeps the
*pixels*, not just the concept. The descriptor has two parts, each L2-normalised, then weighted
and normalised together so that one cosine compares images:

- layout: an RGB ``thumb`` x ``thumb`` thumbnail, zero-mean (brightness offset removed) and
  unit-norm (contrast removed); low resolution makes it tolerant of crops of a few per cent;
- colour: per-channel histograms of that thumbnail (``hist_bins`` bins, Gaussian-smoothed by
  ``hist_sigma`` bins, square-rooted (Hellinger), zero-mean); a crop hardly moves them, while two
  drawings of one concept differ in their exact colours.

``kind: lowlevel`` computes another descriptor from the same decode: low-level image statistics
for learned quality heads (:func:`lowlevel_descriptors`), not for dedup. ``kind: encoder`` runs a
TorchScript image encoder on the thumbnails instead (``encoder``: a path or URL), e.g. the copy
encoder ``curate train-encoder`` fits on the pool (:mod:`curation.filtering.copy_encoder`), which
is what SemDeDup needs on the synthetic crawl.

Images are decoded with PIL's JPEG ``draft`` mode (DCT-domain downscaling), which is several
times faster than a full decode for thumbnails this small.
"""

from __future__ import annotations

import hashlib
import io
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import model_validator
from scipy.ndimage import gaussian_filter1d

from curation.core import storage
from curation.core.config import ConfigModel


class CopyDescConfig(ConfigModel):
    """Descriptor settings; the defaults were chosen by measurement on the synthetic crawl."""

    kind: Literal["copy", "lowlevel", "encoder"] = "copy"  # lowlevel: thumb 64; encoder: its thumb
    column: str = "copydesc"  # attribute stage and column name: POOL/attributes/<column>/
    encoder: str | None = None  # kind encoder: a TorchScript module (path or URL), uint8 thumbs / 255 in
    thumb: int = 16  # thumbnail side in pixels
    hist_bins: int = 64  # colour histogram bins per channel
    hist_sigma: float = 1.0  # Gaussian smoothing of the histograms, in bins (0: none)
    hist_weight: float = 1.5  # weight of the colour part against the layout part

    @model_validator(mode="after")
    def _encoder_given(self) -> CopyDescConfig:
        if (self.kind == "encoder") != (self.encoder is not None):
            raise ValueError("copydesc: 'encoder' (a TorchScript file) is set exactly when kind is encoder")
        return self

    def identity(self) -> dict:
        """The settings a descriptor folder is pinned to (``kind`` only when not the original one, so
        folders written before it existed still resume; an encoder by its bytes' sha256, so another
        model under the same path cannot resume into the column)."""
        ident = self.model_dump(exclude={"kind", "encoder"} if self.kind == "copy" else None)
        if self.kind == "encoder":
            assert self.encoder is not None
            ident["encoder_sha256"] = hashlib.sha256(storage.read_bytes(self.encoder)).hexdigest()
        return ident

    def dim(self) -> int:
        if self.kind == "lowlevel":
            return lowlevel_dim(self.thumb)
        if self.kind == "encoder":
            from curation.filtering.copy_encoder import encoder_dim

            assert self.encoder is not None
            return encoder_dim(self.encoder, self.thumb)
        return 3 * self.thumb * self.thumb + 3 * self.hist_bins


def thumbnail(data: bytes, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB thumbnail (box filter over a draft-mode decode); raises on bad bytes."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))
        rgb = im.convert("RGB")
        return np.asarray(rgb.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def _center_normalize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def colour_histograms(thumbs: np.ndarray, bins: int, sigma: float) -> np.ndarray:
    """``(n, 3 * bins)`` per-channel histograms of ``(n, s, s, 3)`` uint8 thumbnails (one bincount)."""
    n = len(thumbs)
    codes = (thumbs.reshape(n, -1, 3).astype(np.int64) * bins) >> 8
    codes += np.arange(3) * bins + (np.arange(n) * 3 * bins)[:, None, None]
    hist = np.bincount(codes.ravel(), minlength=n * 3 * bins).reshape(n, 3, bins).astype(np.float32)
    if sigma > 0:
        hist = gaussian_filter1d(hist, sigma, axis=2)
    return hist.reshape(n, -1)


EDGE_GRID, EDGE_BINS, COLOUR_THUMB = 8, 16, 16


def lowlevel_dim(thumb: int) -> int:
    return EDGE_GRID * EDGE_GRID + 2 * thumb + EDGE_BINS + 3 * COLOUR_THUMB * COLOUR_THUMB


def lowlevel_descriptors(thumbs: np.ndarray) -> np.ndarray:
    """Low-level statistics of ``(n, s, s, 3)`` thumbnails (s a multiple of 16, e.g. 64): where and how
    strong the fine detail is, and the coarse picture. Parts: the mean absolute Laplacian of the
    grayscale thumbnail on an 8x8 grid, its row and column profiles, a 16-bin histogram of it
    (square-rooted), and a 16x16 RGB thumbnail scaled to [0, 1]. Overlaid text and watermarks are
    fine, high-contrast detail in bands or tiles, which these show and a 16x16 thumbnail does not
    (ROC AUC measured in docs/scoring.md); a CLIP image embedding carries the same on real data."""
    n, s = thumbs.shape[:2]
    if s % EDGE_GRID or s % COLOUR_THUMB:
        raise ValueError(f"lowlevel descriptors need a thumbnail side divisible by 16, got {s}")
    rgb = thumbs.astype(np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    lap = np.zeros_like(gray)
    lap[:, 1:-1, 1:-1] = np.abs(
        4 * gray[:, 1:-1, 1:-1]
        - gray[:, :-2, 1:-1]
        - gray[:, 2:, 1:-1]
        - gray[:, 1:-1, :-2]
        - gray[:, 1:-1, 2:]
    )
    cell = s // EDGE_GRID
    grid = lap.reshape(n, EDGE_GRID, cell, EDGE_GRID, cell).mean(axis=(2, 4)).reshape(n, -1)
    hist = np.stack([np.histogram(x, bins=EDGE_BINS, range=(0.0, 1.0))[0] for x in lap]) / (s * s)
    f = s // COLOUR_THUMB
    small = rgb.reshape(n, COLOUR_THUMB, f, COLOUR_THUMB, f, 3).mean(axis=(2, 4)).reshape(n, -1)
    parts = [grid, lap.mean(axis=2), lap.mean(axis=1), np.sqrt(hist), small]
    return np.hstack(parts).astype(np.float32)


def descriptors(thumbs: np.ndarray, cfg: CopyDescConfig) -> np.ndarray:
    """``(n, cfg.dim())`` float32 unit-norm descriptors of ``(n, thumb, thumb, 3)`` uint8 thumbnails."""
    n = len(thumbs)
    if n == 0:
        return np.zeros((0, cfg.dim()), np.float32)
    if cfg.kind == "lowlevel":
        return lowlevel_descriptors(thumbs)
    if cfg.kind == "encoder":
        from curation.filtering.copy_encoder import embed

        assert cfg.encoder is not None
        return embed(cfg.encoder, thumbs)
    layout = _center_normalize(thumbs.reshape(n, -1).astype(np.float32))
    colour = _center_normalize(np.sqrt(colour_histograms(thumbs, cfg.hist_bins, cfg.hist_sigma)))
    out = np.hstack([layout, cfg.hist_weight * colour])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
