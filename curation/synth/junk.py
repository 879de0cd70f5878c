"""Junk kinds of the synthetic crawl: what each is, how it is made, how a downloader should see it.

Every pair is either ``clean`` or exactly one junk kind. Kinds group by what they break:

- caption junk (image fine, caption useless): ``mismatched``, ``unnamed``, ``foreign``;
- image junk (downloads fine, image bad or redundant): ``tiny``, ``extreme_aspect``, ``exact_dup``,
  ``near_dup``, ``semantic_dup`` (the same scene with another crop, colour grading and caption: what
  SemDeDup should find; rate 0 in the default crawl, see ``conf/synth/methods.yaml``);
- failed downloads: ``dead_404``, ``server_500``, ``corrupt``, ``non_image``;
- transport quirks that still download a clean pair: ``slow``, ``redirect``.

Counts per source are allocated exactly (largest remainder), not sampled, so a 3,000-pair crawl
holds every kind its rates ask for and the measured rates equal the configured ones to rounding.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np
from PIL import Image

from curation.synth.rand import allocate_exact

JunkKind = Literal[
    "mismatched",
    "unnamed",
    "foreign",
    "tiny",
    "extreme_aspect",
    "exact_dup",
    "near_dup",
    "dead_404",
    "server_500",
    "corrupt",
    "non_image",
    "slow",
    "redirect",
    "semantic_dup",
]
CLEAN = "clean"
JUNK_KINDS: tuple[str, ...] = get_args(JunkKind)
KINDS: tuple[str, ...] = (CLEAN, *JUNK_KINDS)  # index 0 is clean

CAPTION_JUNK = frozenset({"mismatched", "unnamed", "foreign"})
IMAGE_JUNK = frozenset({"tiny", "extreme_aspect", "exact_dup", "near_dup", "semantic_dup"})
DUPLICATES = frozenset({"exact_dup", "near_dup", "semantic_dup"})
FAILED_DOWNLOADS = frozenset({"dead_404", "server_500", "corrupt", "non_image"})
TRANSPORT_QUIRKS = frozenset({"slow", "redirect"})
CONTENT_JUNK = CAPTION_JUNK | IMAGE_JUNK  # what content filters are measured against

# Short failure kinds a downloader should report; img2dataset's messages are in docs/synth.md.
EXPECTED_ERROR: Mapping[str, str] = {
    "dead_404": "http_404",
    "server_500": "http_500",
    "corrupt": "decode_error",
    "non_image": "decode_error",
}


def allocate(n: int, rates: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(rate * n)`` items per kind (largest remainder), the rest clean, shuffled.

    Returns indices into :data:`KINDS` (0 = clean).
    """
    weights = [rates.get(k, 0.0) for k in JUNK_KINDS]
    clean = max(0.0, 1.0 - sum(weights))
    if clean + sum(weights) <= 0:
        raise ValueError("junk rates are all zero and nothing is clean")
    return allocate_exact(n, [clean, *weights], rng).astype(np.int8)


def corrupt_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes that keep an image signature but cannot be decoded (by PIL or OpenCV).

    Three realistic breakages: cut off mid-transfer, headers only, garbled after the signature.
    """
    variant = int(rng.integers(3))
    if variant == 0:
        return data[: int(len(data) * rng.uniform(0.15, 0.5))]
    if variant == 1:
        sos = data.find(b"\xff\xda")
        return data[: sos if sos > 0 else 64]
    keep = int(rng.integers(3, 24))
    return data[:keep] + rng.bytes(max(64, len(data) - keep))


def near_duplicate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A re-encoded, resized or slightly cropped copy; returns (jpeg bytes, variant name)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    variant = ("requality", "resize", "crop")[int(rng.integers(3))]
    quality = int(rng.integers(35, 75))
    if variant == "resize":
        f = rng.uniform(0.6, 0.9)
        img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BILINEAR)
        quality = int(rng.integers(70, 92))
    elif variant == "crop":
        dx, dy = round(w * rng.uniform(0.03, 0.1)), round(h * rng.uniform(0.03, 0.1))
        ox, oy = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        img = img.crop((ox, oy, w - (dx - ox), h - (dy - oy)))
        quality = int(rng.integers(70, 92))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue(), variant


def semantic_duplicate(data: bytes, rng: np.random.Generator) -> bytes:
    """The same scene shot again: another crop (6-16% of the width and height, scaled back to the
    original size), another colour grading (contrast x0.75-1.3, brightness +-25, a tint of +-8% per
    channel), re-encoded as JPEG at quality 70-92. Its caption is written anew by the caller."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    dx, dy = round(w * rng.uniform(0.06, 0.16)), round(h * rng.uniform(0.06, 0.16))
    ox, oy = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    img = img.crop((ox, oy, w - (dx - ox), h - (dy - oy))).resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, np.float32)
    mean = arr.mean()
    gain = rng.uniform(0.75, 1.3) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    arr = (arr - mean) * gain + mean + rng.uniform(-25, 25)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(70, 92)), optimize=False)
    return buf.getvalue()


_PAGES = (
    ("Page not found", "<h1>Oops!</h1><p>The page you are looking for has moved.</p>"),
    ("Sign in", '<form action="/login" method="post"><input name="user"><input type="password"></form>'),
    ("Access denied", "<h1>403</h1><p>Hotlinking of images is not allowed on this site.</p>"),
    (
        "Just a moment...",
        "<p>Checking your browser before accessing the site.</p><script>setTimeout(1)</script>",
    ),
)


def non_image_page(rng: np.random.Generator) -> bytes:
    """An HTML page where an image was expected (soft 404, login wall, hotlink block)."""
    title, body = _PAGES[int(rng.integers(len(_PAGES)))]
    html = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head>\n<body>{body}</body></html>\n"
    )
    return html.encode("utf-8")


def fault_entry(kind: str, *, delay_s: float, target: str | None) -> dict | None:
    """What the server must do for a url of this kind (None: serve the file as it is on disk)."""
    if kind == "dead_404":
        return {"kind": kind, "status": 404}
    if kind == "server_500":
        return {"kind": kind, "status": 500}
    if kind == "slow":
        return {"kind": kind, "delay_s": delay_s}
    if kind == "non_image":
        return {"kind": kind, "content_type": "text/html; charset=utf-8"}
    if kind == "redirect":
        return {"kind": kind, "status": 302, "location": target}
    return None
