"""A small pool with images, written exactly as img2dataset writes one (webdataset tars + parquet).

Used by the scoring tests and by ``bench/score_throughput.py``. Images are PIL drawings (a shape
of a named colour on a noisy background), so JPEG sizes and decode costs resemble real photos.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageDraw

from curation.core.uid import compute_uid

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw(rng: np.random.Generator, colour: str, shape: str, size: int) -> Image.Image:
    noise = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8) + np.uint8(120)
    img = Image.fromarray(noise)
    d = ImageDraw.Draw(img)
    lo, hi = int(size * rng.uniform(0.1, 0.3)), int(size * rng.uniform(0.6, 0.9))
    if shape == "circle":
        d.ellipse((lo, lo, hi, hi), fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle((lo, lo, hi, hi), fill=COLOURS[colour])
    else:
        d.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=COLOURS[colour])
    return img


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_image_pool(
    root: Path,
    n_shards: int = 2,
    per_shard: int = 12,
    image_size: int = 64,
    seed: int = 0,
    corrupt: Collection[str] = (),
    empty_caption: Collection[str] = (),
    no_caption_file: Collection[str] = (),
    failed_every: int = 0,
) -> Path:
    """Shards ``NNNNN.tar`` + ``NNNNN.parquet`` + ``NNNNN_stats.json``; keys are ``SSSSSIIII``.

    ``corrupt`` keys get a truncated JPEG, ``empty_caption`` an empty ``.txt``, ``no_caption_file`` no
    ``.txt`` at all; every ``failed_every``-th url failed to download (a parquet row, no tar sample).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        rows = []
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
                caption = f"a photo of a {colour} {shape}"
                url = f"http://127.0.0.1/img/{key}.jpg"
                uid = compute_uid(url, caption)
                source = ("photo", "forum")[i % 2]
                failed = failed_every and i % failed_every == failed_every - 1
                row = {
                    "key": key,
                    "url": url,
                    "caption": caption,
                    "status": "failed_to_download" if failed else "success",
                    "error_message": "HTTP Error 404: Not Found" if failed else None,
                    "width": None if failed else image_size,
                    "height": None if failed else image_size,
                    "original_width": None if failed else image_size,
                    "original_height": None if failed else image_size,
                    "sha256": None,
                    "uid": uid,
                    "source": source,
                }
                if not failed:
                    data = jpeg(draw(rng, str(colour), str(shape), image_size))
                    if key in corrupt:
                        data = data[: len(data) // 3]
                    row["sha256"] = hashlib.sha256(data).hexdigest()
                    sample = {"__key__": key, "jpg": data, "json": json.dumps(row, indent=4)}
                    if key not in no_caption_file:
                        sample["txt"] = "" if key in empty_caption else caption
                    tar.write(sample)
                rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
        ok = sum(r["status"] == "success" for r in rows)
        (root / f"{s:05d}_stats.json").write_text(json.dumps({"count": len(rows), "successes": ok}))
    return root
