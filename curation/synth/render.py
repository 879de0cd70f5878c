"""Render one concept as a small web-like image in a named visual style.

(Over 400 lines: the styles and the drawing primitives they parameterise are one vocabulary.)

A style is a bundle of distributions (background, fill, outline, clutter, noise, size, rotation,
JPEG quality). Sources of the crawl differ by style, the shifted test sets use styles the crawl
never shows (sketch outlines, patterned fills) or the crawl's styles with shifted parameters
(the "v2" re-sample), so robustness measured on them means something. All randomness comes from
the caller's generator: one generator per image gives byte-identical output for a seed.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from curation.synth.classes import Concept, normalized_shape

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (240, 135, 25),
    "yellow": (245, 210, 35),
    "gold": (205, 165, 45),
    "green": (45, 150, 60),
    "blue": (40, 85, 210),
    "purple": (125, 55, 170),
    "pink": (240, 115, 170),
    "brown": (120, 72, 35),
    "black": (25, 25, 28),
    "white": (246, 246, 242),
    "gray": (128, 128, 132),
}
COLOR_NAMES = tuple(COLORS)
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Style:
    """Distributions one rendering style draws from (ranges are inclusive (lo, hi))."""

    name: str
    background: str  # flat | texture | noisy | paper | pattern
    fill: str  # flat | shaded | pattern | none
    outline: tuple[int, int] = (0, 0)  # outline width in px
    clutter: tuple[int, int] = (0, 0)  # number of clutter strokes/blobs behind the object
    noise: tuple[float, float] = (0.0, 0.0)  # pixel noise sigma
    blur: float = 0.0  # probability of a slight blur
    quality: tuple[int, int] = (85, 95)  # JPEG quality
    side: tuple[int, int] = (64, 128)  # longer image side in px
    aspect: tuple[float, float] = (1.0, 1.0)  # width / height
    scale: tuple[float, float] = (0.5, 0.85)  # object extent / shorter side
    rotation: float = 25.0  # max |degrees|
    jitter: float = 0.0  # hand-drawn vertex jitter (unit coordinates)
    brightness: tuple[float, float] = (1.0, 1.0)
    color_jitter: int = 12
    grayscale: bool = False
    multi_count: float = 0.0  # probability of drawing 2-3 copies of the object


STYLES: dict[str, Style] = {
    s.name: s
    for s in [
        Style("photo", "texture", "shaded", clutter=(0, 3), noise=(4, 10), blur=0.3, quality=(70, 92),
              side=(96, 128), aspect=(0.75, 1.34), scale=(0.55, 0.88), multi_count=0.06),
        Style("clipart", "flat", "flat", outline=(2, 4), quality=(88, 96), side=(64, 128),
              scale=(0.6, 0.92), rotation=15.0, multi_count=0.06),
        Style("forum", "noisy", "shaded", outline=(0, 2), clutter=(1, 5), noise=(8, 20), blur=0.3,
              quality=(30, 65), side=(64, 112), aspect=(0.6, 1.6), scale=(0.48, 0.82), rotation=35.0),
        Style("sketch", "paper", "none", outline=(1, 2), noise=(2, 5), quality=(85, 95), side=(80, 128),
              scale=(0.5, 0.85), jitter=0.035, grayscale=True),
        Style("pattern", "pattern", "pattern", outline=(1, 2), clutter=(0, 2), noise=(0, 6),
              quality=(80, 95), side=(80, 128), aspect=(0.8, 1.25), scale=(0.5, 0.85)),
    ]
}  # fmt: skip


def shifted(style: Style) -> Style:
    """The same style re-sampled with shifted parameters (an ImageNetV2-like mild shift)."""
    lo, hi = style.scale
    return dataclasses.replace(
        style,
        name=f"{style.name}_v2",
        scale=(lo * 0.78, hi * 0.85),
        rotation=style.rotation + 20.0,
        clutter=(style.clutter[0] + 1, style.clutter[1] + 3),
        brightness=(0.72, 1.05),
        color_jitter=40,
        quality=(max(25, style.quality[0] - 15), style.quality[1] - 5),
        aspect=(style.aspect[0] * 0.85, style.aspect[1] * 1.15),
    )


def get_style(name: str) -> Style:
    """A style by name; ``<base>_v2`` is the shifted version of a base style."""
    if name.endswith("_v2") and name[:-3] in STYLES:
        return shifted(STYLES[name[:-3]])
    if name not in STYLES:
        raise ValueError(f"unknown synth style {name!r}; known: {sorted(STYLES)} (+ '_v2' variants)")
    return STYLES[name]


@dataclass
class Drawn:
    """A rendered image and the attributes a truthful caption may mention."""

    image: Image.Image
    color: str
    size: str  # small | medium | large
    position: str  # e.g. "top left", "center"
    count: int
    second: Concept | None = None


def pick_color(rng: np.random.Generator, concept: Concept, prior: float) -> str:
    if concept.palette and rng.random() < prior:
        return str(concept.palette[int(rng.integers(len(concept.palette)))])
    return COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _contrasting(rng: np.random.Generator, fg: np.ndarray, pastel: bool) -> np.ndarray:
    """A background colour far enough from the object colour that the silhouette stays visible."""
    for _ in range(20):
        c = rng.uniform(150, 255, 3) if pastel else rng.uniform(0, 255, 3)
        if np.abs(c - fg).sum() > 220:
            return c.astype(np.float32)
    return (255 - fg).astype(np.float32)


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return (int(c[0]), int(c[1]), int(c[2]))


@lru_cache(maxsize=256)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx / max(w - 1, 1), yy / max(h - 1, 1)


def _field(rng: np.random.Generator, w: int, h: int, base: np.ndarray, spread: float) -> Image.Image:
    """Low-frequency colour noise around ``base``: a cheap stand-in for a photographed surface."""
    n = int(rng.integers(3, 6))
    small = np.clip(base + rng.uniform(-spread, spread, (n, n, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def _pattern(rng: np.random.Generator, w: int, h: int, c1: np.ndarray, c2: np.ndarray) -> Image.Image:
    xx, yy = _grid(w, h)
    freq = rng.uniform(5, 11)
    kind = int(rng.integers(3))
    if kind == 0:  # stripes at a random angle
        a = rng.uniform(0, np.pi)
        m = ((xx * np.cos(a) + yy * np.sin(a)) * freq) % 1.0 < 0.5
    elif kind == 1:  # checkerboard
        m = ((np.floor(xx * freq) + np.floor(yy * freq)) % 2) == 0
    else:  # polka dots
        fx, fy = (xx * freq) % 1.0 - 0.5, (yy * freq) % 1.0 - 0.5
        m = fx * fx + fy * fy < 0.09
    return Image.fromarray(np.where(m[..., None], c1.astype(np.uint8), c2.astype(np.uint8)))


def _background(rng: np.random.Generator, style: Style, w: int, h: int, fg: np.ndarray) -> Image.Image:
    kind = style.background
    if kind == "flat":
        c = np.full(3, 250.0, np.float32) if rng.random() < 0.4 else _contrasting(rng, fg, pastel=True)
        return Image.new("RGB", (w, h), _rgb(c))
    if kind == "paper":
        v = int(rng.uniform(225, 250))
        return Image.new("RGB", (w, h), (v, v, v))
    if kind == "pattern":  # a faint wallpaper: the patterned object must stay the figure
        c1 = _contrasting(rng, fg, pastel=True)
        c2 = np.clip(c1 * rng.uniform(0.82, 0.92), 0, 255)
        return _pattern(rng, w, h, c1, c2)
    spread = 45.0 if kind == "texture" else 75.0
    return _field(rng, w, h, _contrasting(rng, fg, pastel=False), spread)


def _clutter(rng: np.random.Generator, img: Image.Image, n: int) -> None:
    """Strokes and irregular blobs behind the object; never closed regular shapes (no fake classes)."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            x1, y1 = x0 + rng.uniform(-w / 2, w / 2), y0 + rng.uniform(-h / 2, h / 2)
            draw.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 3)))
        else:
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, max(4.0, min(w, h) / 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, 6))
            rad = r * rng.uniform(0.4, 1.0, 6)
            draw.polygon(list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang), strict=True)), fill=col)


def _place(
    rng: np.random.Generator,
    concept: Concept,
    style: Style,
    half: float,
    box: tuple[float, float, float, float],
) -> tuple[list, tuple[float, float]]:
    """Transform the concept's parts to pixel coordinates inside ``box`` (x0, y0, x1, y1)."""
    parts = normalized_shape(concept, rng)
    full_turn = concept.name == "arrow"
    theta = np.deg2rad(rng.uniform(0, 360) if full_turn else rng.uniform(-style.rotation, style.rotation))
    if rng.random() < 0.5 and concept.name in ("fish", "key", "arrow", "umbrella", "cup"):
        parts = [dataclasses.replace(p, points=p.points * np.array([-1.0, 1.0])) for p in parts]
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = []
    for p in parts:
        pts = p.points
        if style.jitter:
            pts = pts + rng.normal(0, style.jitter, pts.shape)
        moved.append((pts @ rot.T * half, p.value, p.width * half))
    allpts = np.vstack([m[0] for m in moved])
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    x0, y0, x1, y1 = box
    cx = rng.uniform(x0 - lo[0], max(x0 - lo[0], x1 - hi[0]))
    cy = rng.uniform(y0 - lo[1], max(y0 - lo[1], y1 - hi[1]))
    offset = np.array([cx, cy])
    return [(pts + offset, v, wd) for pts, v, wd in moved], (cx, cy)


def _mask(w: int, h: int, placed: list) -> Image.Image:
    s = SUPERSAMPLE
    m = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(m)
    for pts, value, width in placed:
        xy = [tuple(q) for q in (pts * s).tolist()]
        if width > 0:
            draw.line(xy, fill=value, width=max(1, round(width * s)), joint="curve")
        else:
            draw.polygon(xy, fill=value)
    return m.reduce(s)


_GAIN = np.linspace(0.7, 1.2, 256, dtype=np.float32)
_ERODE_LUT = [0 if v < 150 else min(255, (v - 150) * 255 // 90) for v in range(256)]


def _edge(mask: Image.Image, width: int) -> Image.Image:
    """The inner rim of a silhouette, ``width`` px wide (box blur + threshold: cost independent of width)."""
    eroded = mask.filter(ImageFilter.BoxBlur(width)).point(_ERODE_LUT)
    return ImageChops.subtract(mask, eroded)


def _fill_layer(rng: np.random.Generator, style: Style, w: int, h: int, color: np.ndarray) -> Image.Image:
    if style.fill == "flat":
        return Image.new("RGB", (w, h), _rgb(color))
    if style.fill == "pattern":
        return _pattern(rng, w, h, color, np.clip(255 - color * rng.uniform(0.5, 1.0), 0, 255))
    xx, yy = _grid(w, h)  # shaded: a light ramp across the object, applied through per-channel LUTs
    a = rng.uniform(0, 2 * np.pi)
    ramp = xx * np.float32(np.cos(a)) + yy * np.float32(np.sin(a))
    ramp -= ramp.min()
    ramp *= np.float32(255.0 / max(float(ramp.max()), 1e-6))
    lut = np.clip(np.outer(_GAIN, color), 0, 255).astype(np.uint8)  # (256, 3)
    return Image.fromarray(lut[ramp.astype(np.uint8)])


def _draw_object(
    rng: np.random.Generator, style: Style, canvas: Image.Image, placed: list, color: np.ndarray
) -> Image.Image:
    w, h = canvas.size
    mask = _mask(w, h, placed)
    if style.fill != "none":
        canvas = Image.composite(_fill_layer(rng, style, w, h, color), canvas, mask)
    lo, hi = style.outline
    width = int(rng.integers(lo, hi + 1)) if hi else 0
    if width:
        if style.fill == "none" or rng.random() < 0.8:
            v = int(rng.uniform(10, 60))
            ink = (v, v, v)
        else:
            ink = _rgb(color * 0.4)
        canvas = Image.composite(Image.new("RGB", (w, h), ink), canvas, _edge(mask, width))
    return canvas


def _hatch(rng: np.random.Generator, canvas: Image.Image, placed: list) -> Image.Image:
    """Pencil hatching inside a sketch silhouette."""
    w, h = canvas.size
    mask = np.asarray(_mask(w, h, placed), np.float32)
    xx, yy = _grid(w, h)
    a = rng.uniform(0, np.pi)
    lines = ((xx * np.cos(a) + yy * np.sin(a)) * rng.uniform(10, 18)) % 1.0 < 0.18
    alpha = Image.fromarray((lines * mask * rng.uniform(0.3, 0.6)).astype(np.uint8))
    return Image.composite(Image.new("RGB", (w, h), (40, 40, 40)), canvas, alpha)


def _describe(center: tuple[float, float], half: float, w: int, h: int, style: Style) -> tuple[str, str]:
    col = ("left", "center", "right")[min(2, int(3 * center[0] / w))]
    row = ("top", "middle", "bottom")[min(2, int(3 * center[1] / h))]
    position = (
        "center" if (row, col) == ("middle", "center") else (col if row == "middle" else f"{row} {col}")
    )
    rel = 2 * half / min(w, h)
    lo, hi = style.scale
    size = "small" if rel < lo + (hi - lo) * 0.3 else "large" if rel > lo + (hi - lo) * 0.7 else "medium"
    return size, position


def image_size(rng: np.random.Generator, style: Style) -> tuple[int, int]:
    side = int(rng.integers(style.side[0], style.side[1] + 1))
    aspect = float(rng.uniform(*style.aspect))
    if aspect >= 1:
        return side, max(16, round(side / aspect))
    return max(16, round(side * aspect)), side


def _layout(
    rng: np.random.Generator, style: Style, w: int, h: int, n: int
) -> tuple[list[tuple[float, float, float, float]], float]:
    """Boxes for ``n`` objects side by side along the longer axis, and the objects' half extent."""
    margin = max(1.0, min(w, h) * 0.04)
    scale = float(rng.uniform(*style.scale))
    if n == 1:
        return [(margin, margin, w - margin, h - margin)], min(w, h) / 2 * scale
    boxes = []
    for k in range(n):
        if w >= h:
            boxes.append((margin + k * (w - margin) / n, margin, (k + 1) * (w - margin) / n, h - margin))
        else:
            boxes.append((margin, margin + k * (h - margin) / n, w - margin, (k + 1) * (h - margin) / n))
    cell = min(boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])
    return boxes, cell / 2 * min(0.95, scale + 0.1)


def render(
    rng: np.random.Generator,
    style: Style,
    concept: Concept,
    *,
    second: Concept | None = None,
    color_prior: float = 0.4,
    size: tuple[int, int] | None = None,
) -> Drawn:
    """Draw ``concept`` (and optionally a smaller ``second`` concept) in ``style``."""
    w, h = size or image_size(rng, style)
    color_name = pick_color(rng, concept, color_prior)
    color = _jittered(COLORS[color_name], rng, style.color_jitter)
    canvas = _background(rng, style, w, h, color)
    lo, hi = style.clutter
    if hi:
        _clutter(rng, canvas, int(rng.integers(lo, hi + 1)))
    count = (2 if rng.random() < 0.75 else 3) if second is None and rng.random() < style.multi_count else 1
    objects = [concept] * count if second is None else [concept, second]
    boxes, half = _layout(rng, style, w, h, len(objects))
    order = list(range(len(objects)))
    if second is not None and rng.random() < 0.5:
        order.reverse()
    centers = []
    for k, obj in zip(order, objects, strict=True):
        is_second = second is not None and obj is second
        obj_color = _jittered(COLORS[pick_color(rng, obj, color_prior)], rng, 12) if is_second else color
        placed, c = _place(rng, obj, style, half * (0.8 if is_second else 1.0), boxes[k])
        centers.append(c)
        canvas = _draw_object(rng, style, canvas, placed, obj_color)
        if style.fill == "none":  # sketches: a second, differently jittered stroke and some hatching
            canvas = _draw_object(rng, style, canvas, _place_again(placed, rng, style), obj_color)
            if rng.random() < 0.4:
                canvas = _hatch(rng, canvas, placed)
    canvas = _finish(rng, style, canvas)
    if style.blur and rng.random() < style.blur:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 0.9))))
    size_word, position = _describe(centers[0], half, w, h, style)
    return Drawn(canvas, color_name, size_word, position, count, second)


def _place_again(placed: list, rng: np.random.Generator, style: Style) -> list:
    """The same outline with fresh pixel jitter: a hand-drawn double stroke."""
    sigma = style.jitter * 12
    return [(pts + rng.normal(0, sigma, pts.shape), v, wd) for pts, v, wd in placed]


def _finish(rng: np.random.Generator, style: Style, canvas: Image.Image) -> Image.Image:
    """Sensor noise, exposure and colour mode, applied once to the whole picture."""
    if style.grayscale:
        canvas = canvas.convert("L")
    lo, hi = style.noise
    b = style.brightness
    if hi or b != (1.0, 1.0):
        arr = np.asarray(canvas, np.float32)
        if hi:  # luminance noise: one channel, shared by R, G, B
            shape = arr.shape[:2] + ((1,) if arr.ndim == 3 else ())
            arr = arr + rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(lo, hi))
        if b != (1.0, 1.0):
            arr *= np.float32(rng.uniform(*b))
        canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return canvas.convert("RGB") if canvas.mode != "RGB" else canvas


def encode(img: Image.Image, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Deterministic encoding: fixed settings, no metadata, no timestamps."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buf.getvalue()


def quality_for(rng: np.random.Generator, style: Style) -> int:
    return int(rng.integers(style.quality[0], style.quality[1] + 1))
