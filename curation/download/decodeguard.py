"""Refuse images from their header before img2dataset decodes them.

img2dataset's resizer decodes every image whole with ``cv2.imdecode`` and, for an image with
alpha, mattes it in float64 (about 56 more bytes per pixel). Neither can be limited by its
configuration: ``max_image_area`` is checked only *after* the decode, and ``cv2``'s own pixel limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``, 2^30) lets a 20000x30000 PNG of a few MB grow a worker by gigabytes.
So :class:`GuardedResizer` wraps img2dataset's resizer: it reads the header with PIL (which does
not decode pixel data in ``Image.open``), estimates what the decode would allocate, and refuses the
image with an ``image_too_large: ...`` message when it exceeds the limits; otherwise the original
resizer runs unchanged. The limits mirror scoring's (PIL's ``MAX_IMAGE_PIXELS`` by default).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

IMAGE_TOO_LARGE = "image_too_large"
ALPHA_MATTING_BYTES = 3 * 8 * 2 + 8  # img2dataset's float64 alpha matting: two 3-channel temporaries + alpha
Resized = tuple[Any, Any, Any, Any, Any, str | None]


@dataclass(frozen=True)
class ImageLimits:
    """What one decode may cost (see :class:`curation.download.config.LimitsConfig`)."""

    max_image_pixels: int
    max_decoded_bytes: int


def decode_cost(img: Image.Image, head: bytes) -> int:
    """Bytes img2dataset's decode of this image would allocate (cv2 array plus alpha matting)."""
    w, h = img.size
    bands = len(img.getbands())
    depth = 2 if (img.format == "PNG" and len(head) > 24 and head[24] == 16) or ";16" in img.mode else 1
    alpha = "A" in img.getbands() or "transparency" in img.info
    return w * h * (bands * depth + (ALPHA_MATTING_BYTES if alpha else 0))


def header_refusal(stream: io.BytesIO, limits: ImageLimits) -> str | None:
    """``None`` if the image may be decoded, else an ``image_too_large: ...`` (or decode) message."""
    stream.seek(0)
    head = stream.read(32)
    stream.seek(0)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        # PIL's own bomb check would refuse in open() without saying the size; the limits below
        # replace it. Only this (img2dataset's single decoding) thread of the worker uses PIL.
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as img:  # the header only; no pixel data is decoded
                w, h = img.size
                cost = decode_cost(img, head)
    except Image.UnidentifiedImageError:  # cv2 must not try a format whose header went unchecked
        return "Image decoding error (not an image format PIL can read the header of)"
    except Exception as exc:  # a corrupt header; the message starts with img2dataset's own words
        return f"Image decoding error (header: {type(exc).__name__}: {exc})"
    finally:
        Image.MAX_IMAGE_PIXELS = saved
        stream.seek(0)
    if w * h > limits.max_image_pixels:
        return (
            f"{IMAGE_TOO_LARGE}: {w}x{h} = {w * h:,} pixels, over limits.max_image_pixels="
            f"{limits.max_image_pixels:,}"
        )
    if cost > limits.max_decoded_bytes:
        return (
            f"{IMAGE_TOO_LARGE}: {w}x{h} would take {cost / 2**20:,.0f} MiB to decode, over "
            f"limits.max_decoded_bytes={limits.max_decoded_bytes:,}"
        )
    return None


class GuardedResizer:
    """img2dataset's resizer behind a header check; picklable (it travels to the workers)."""

    def __init__(self, inner: Any, limits: ImageLimits) -> None:
        self.inner = inner
        self.limits = limits

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> Resized:
        refusal = header_refusal(img_stream, self.limits)
        if refusal is not None:
            return None, None, None, None, None, refusal
        return self.inner(img_stream, blurring_bbox_list)
