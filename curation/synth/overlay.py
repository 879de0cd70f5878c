"""Overlaid text and watermarks: the picture defects a learned quality head should detect.

A share of the crawl's pictures (``overlay_fraction``, 0 by default; ``conf/synth/methods.yaml``)
carries one of two overlays, recorded in ``ground_truth.parquet``'s ``overlay`` column: ``text``
(a banner of ad copy) or ``watermark`` (a stock-photo mark tiled diagonally). The choice is drawn
from its own stream, so a crawl without overlays is byte-identical to one made before they existed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OVERLAYS: tuple[str, ...] = ("none", "text", "watermark")
_OVERLAY_WORDS = (
    "SALE",
    "50% OFF",
    "FREE SHIPPING",
    "BEST PRICE",
    "NEW",
    "CLICK HERE",
    "LIMITED",
    "ORDER NOW",
)
_MARKS = ("(c) stockpix", "PREVIEW", "shutterpics", "(c) imgbank", "SAMPLE")


def overlay(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """Overlaid text (a banner of ad copy across a quarter of the picture) or a watermark (a mark
    tiled diagonally over the whole picture at 35-60% opacity); ``none`` returns ``img`` unchanged."""
    if kind == "none":
        return img
    w, h = img.size
    font = ImageFont.load_default(size=max(9, h // int(rng.integers(6, 9))))
    if kind == "text":
        out = img.convert("RGB")
        draw = ImageDraw.Draw(out)
        band = int(h * rng.uniform(0.22, 0.3))
        top = 0 if rng.random() < 0.5 else h - band
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.rectangle((0, top, w, top + band), fill=fill)
        ink = (255, 255, 255) if sum(fill) < 384 else (0, 0, 0)
        text = " ".join(rng.choice(_OVERLAY_WORDS, size=2, replace=False).tolist())
        draw.text((int(w * 0.04), top + band // 6), text, fill=ink, font=font)
        return out
    mark = _MARKS[int(rng.integers(len(_MARKS)))]
    layer = Image.new("L", (w * 2, h * 2), 0)
    draw = ImageDraw.Draw(layer)
    alpha = int(255 * rng.uniform(0.35, 0.6))
    step = max(12, h // 4)
    for y in range(0, h * 2, step):
        draw.text(((y // step) % 2 * step, y), (mark + "   ") * 4, fill=alpha, font=font)
    layer = layer.rotate(float(rng.uniform(20, 40)), resample=Image.Resampling.BILINEAR)
    layer = layer.crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
    white = Image.new("RGB", (w, h), (255, 255, 255))
    return Image.composite(white, img.convert("RGB"), layer)


def plan_overlays(fraction: float, dup_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index into :data:`OVERLAYS` per pair: ``fraction`` of originals get text or a watermark (half
    each); a duplicate inherits its original's."""
    out = np.zeros(len(dup_of), dtype=np.int8)
    if fraction <= 0:
        return out
    first = np.flatnonzero(dup_of < 0)
    chosen = rng.random(len(first)) < fraction
    out[first[chosen]] = rng.integers(1, len(OVERLAYS), size=int(chosen.sum()))
    dups = np.flatnonzero(dup_of >= 0)
    out[dups] = out[dup_of[dups]]
    return out
