"""Tiny evaluation suites in CLIP_benchmark's webdataset layout, drawn with PIL, for the evaluator tests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASSNAMES = ["red square", "green circle", "blue triangle", "yellow cross", "purple star", "orange ring"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}.", "{c}"]
_COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 20), (150, 40, 180), (250, 140, 0)]


def draw(label: int, variant: int, sketch: bool = False) -> Image.Image:
    """A 64x64 picture of class ``label``; ``variant`` moves and resizes it; ``sketch``: outlines only."""
    rng = np.random.default_rng(1000 * label + variant)
    background = (255, 255, 255) if sketch else tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (64, 64), background)
    d = ImageDraw.Draw(img)
    x, y, r = int(rng.integers(18, 46)), int(rng.integers(18, 46)), int(rng.integers(8, 16))
    color = (0, 0, 0) if sketch else _COLORS[label % len(_COLORS)]
    box = [x - r, y - r, x + r, y + r]
    shape = label % 6
    fill = None if sketch else color
    if shape == 0:
        d.rectangle(box, fill=fill, outline=color, width=2)
    elif shape == 1:
        d.ellipse(box, fill=fill, outline=color, width=2)
    elif shape == 2:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill, outline=color)
    elif shape == 3:
        d.line([x - r, y, x + r, y], fill=color, width=4)
        d.line([x, y - r, x, y + r], fill=color, width=4)
    elif shape == 4:
        radii = [r if i % 2 == 0 else 0.45 * r for i in range(10)]
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        pts = [(x + q * np.cos(a), y + q * np.sin(a)) for q, a in zip(radii, angles, strict=True)]
        d.polygon(pts, fill=fill, outline=color)
    else:
        d.ellipse(box, outline=color, width=4)
    return img


def _encode(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext])
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_test_set(
    root: Path,
    samples: Sequence[dict],
    n_shards: int = 1,
    classnames: Sequence[str] = CLASSNAMES,
    templates: Sequence[str] = TEMPLATES,
    dataset_type: str | None = None,
) -> Path:
    """Write ``samples`` (dicts with key, image bytes + ext, optional cls / txt) into ``root``."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    if dataset_type:
        (root / "dataset_type.txt").write_text(dataset_type + "\n")
    for shard in range(n_shards):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for s in samples[shard::n_shards]:
                if "image" in s:
                    _add(tar, f"{s['key']}.{s['ext']}", s["image"])
                if "cls" in s:
                    _add(tar, f"{s['key']}.cls", str(s["cls"]).encode())
                if "txt" in s:
                    _add(tar, f"{s['key']}.txt", s["txt"].encode())
    (root / "test" / "nshards.txt").write_text(f"{n_shards}\n")
    return root


def classification_samples(labels: Sequence[int], sketch: bool = False, offset: int = 0) -> list[dict]:
    exts = ["jpg", "png", "webp"]
    out = []
    for i, lab in enumerate(labels):
        ext = exts[i % 3]
        out.append(
            {
                "key": f"s{offset + i:07d}",
                "ext": ext,
                "image": _encode(draw(lab, offset + i, sketch), ext),
                "cls": lab,
            }
        )
    return out


def retrieval_samples(n: int) -> list[dict]:
    out = []
    for i in range(n):
        label = i % len(CLASSNAMES)
        name = CLASSNAMES[label]
        caps = [f"a {name} on a dark background, photo {i}", f"picture number {i} of a {name}"]
        out.append(
            {
                "key": f"r{i:07d}",
                "ext": "png",
                "image": _encode(draw(label, 500 + i), "png"),
                "txt": "\n".join(caps[: 1 + i % 2]),
            }
        )  # one or two captions per image
    return out


def make_suite(root: Path, corrupt_in_shift: bool = True) -> Path:
    """36-image ID set over 2 shards, 24-image sketch shift (+1 corrupt image), 14-image retrieval set."""
    id_labels = [i % 6 for i in range(36)]
    write_test_set(root / "tiny_id", classification_samples(id_labels), n_shards=2)
    shift = classification_samples([(i * 5) % 6 for i in range(24)], sketch=True, offset=100)
    if corrupt_in_shift:
        shift.append({"key": "s9999999", "ext": "jpg", "image": b"\xff\xd8 not really a jpeg", "cls": 0})
    write_test_set(root / "tiny_sketch", shift)
    write_test_set(root / "tiny_retrieval", retrieval_samples(14), dataset_type="retrieval")
    suite = {
        "name": "tiny",
        "test_sets": [
            {"name": "tiny_id", "path": "tiny_id", "role": "in_distribution"},
            {"name": "tiny_sketch", "path": "tiny_sketch", "role": "shift"},
            {"name": "tiny_retrieval", "path": "tiny_retrieval", "role": "retrieval"},
        ],
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return root
