"""Test fixture: a few coloured shape classes drawn with PIL, written as training shards.

Only for the trainer tests (the project's real synthetic crawl lives elsewhere). The class is the
shape; each shape comes in two colours of its own (so a tiny model can learn it in seconds) and
size, position, rotation and background vary. The caption names colour and shape ("a photo of a
red circle"); zero-shot prompts name only the shape, so a model classifies well only if training
tied the shape word to the images.
Shards follow the training-shard contract of CONVENTIONS.md: ``KEY.jpg``, ``KEY.txt``,
``KEY.json`` (uid, source), ``KEY.cls`` plus ``sizes.json`` and ``stats.json``.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from curation.core.uid import compute_uid

CLASSNAMES = ["circle", "square", "triangle", "cross", "star", "ring"]
COLORS = {
    "circle": {"red": (220, 30, 30), "orange": (240, 130, 20)},
    "square": {"blue": (30, 60, 220), "navy": (20, 30, 110)},
    "triangle": {"green": (30, 170, 50), "olive": (110, 120, 20)},
    "cross": {"purple": (140, 40, 170), "pink": (240, 80, 200)},
    "star": {"yellow": (230, 200, 20), "gold": (200, 160, 40)},
    "ring": {"black": (15, 15, 15), "gray": (110, 110, 110)},
}
CAPTION_STYLES = [
    "a photo of a {color} {shape}",
    "a {color} {shape}",
    "{color} {shape} on a plain background",
]
TEMPLATES = ["a photo of a {c}.", "a {c}."]


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple]:
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        rad = r if (inner is None or k % 2 == 0) else r * inner
        a = rot + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(shape: str, color: tuple[int, int, int], rng: random.Random, size: int = 64) -> Image.Image:
    """One image of ``shape``: random light background, size, position and rotation."""
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    rot = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "ring":
        d.ellipse(box, outline=color, width=max(2, int(r * 0.3)))
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.2, 4, rot), fill=color)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.2, 3, rot), fill=color)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r * 1.2, 5, rot, inner=0.45), fill=color)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def make_samples(n_per_class: int, seed: int) -> list[dict]:
    """Balanced, shuffled samples: PIL image, caption, label."""
    rng = random.Random(seed)
    out = []
    for label, shape in enumerate(CLASSNAMES):
        for _ in range(n_per_class):
            cname, rgb = rng.choice(sorted(COLORS[shape].items()))
            caption = rng.choice(CAPTION_STYLES).format(color=cname, shape=shape)
            out.append({"image": draw_shape(shape, rgb, rng), "caption": caption, "label": label})
    rng.shuffle(out)
    return out


def write_shards(out_dir: str | Path, n_per_class: int = 100, n_shards: int = 4, seed: int = 0) -> Path:
    """Write training shards for the shapes set into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = make_samples(n_per_class, seed)
    sizes: dict[str, int] = {}
    for s, part in enumerate(np.array_split(np.arange(len(samples)), n_shards)):
        name = f"{s:05d}.tar"
        with wds.TarWriter(str(out_dir / name)) as sink:
            for i in part:
                smp = samples[int(i)]
                buf = io.BytesIO()
                smp["image"].save(buf, format="JPEG", quality=92)
                url = f"http://127.0.0.1/shapes/{seed}/{i}.jpg"
                meta = {"uid": compute_uid(url, smp["caption"]), "source": "shapes", "url": url}
                sink.write(
                    {
                        "__key__": f"{s:05d}{int(i):05d}",
                        "jpg": buf.getvalue(),
                        "txt": smp["caption"],
                        "json": json.dumps(meta),
                        "cls": str(smp["label"]),
                    }
                )
        sizes[name] = len(part)
    (out_dir / "sizes.json").write_text(json.dumps(sizes))
    (out_dir / "stats.json").write_text(json.dumps({"samples": len(samples), "source": "shapes fixture"}))
    return out_dir
