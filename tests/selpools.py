"""Small pools for selection and reshard tests.

``write_datacomp_pool``: a DataComp-style metadata pool (parquet only: uid, text, url, sizes, both
CLIP scores with ties and NaNs, a precomputed ``lang`` and a ``source``).
``write_image_pool``: an img2dataset-style pool (tars with jpg/txt/json, parquet with key, url,
caption, status, uid, source, sizes, sha256, failures included) plus a ``clip`` attribute table.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.core.uid import compute_uid
from curation.core.uidvec import uids_to_hex_array

WORDS = ["red", "blue", "photo", "of", "a", "cat", "dog", "on", "the", "beach", "x", "ok"]
# odd whitespace: Python's str.split() splits on all of these, RE2's \s on only some
SPACES = [" ", " ", " ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c", "\x0b", "\u2028"]


def random_uids(rng: np.random.Generator, n: int) -> np.ndarray:
    u = np.empty(n, dtype="u8,u8")
    u["f0"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    u["f1"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    return u


def caption(rng: np.random.Generator) -> str:
    n = int(rng.choice([0, 1, 2, 3, 3, 4, 6]))
    parts = []
    for _ in range(n):
        parts.append(str(rng.choice(WORDS)))
        parts.append(str(rng.choice(SPACES)))
    return "".join(parts)[: int(rng.integers(0, 40))] if rng.random() < 0.2 else "".join(parts)


def scores(rng: np.random.Generator, n: int, nan_rate: float = 0.05) -> np.ndarray:
    """float32 scores on a coarse grid (many ties) with some NaNs."""
    s = (np.round(rng.normal(0.25, 0.08, n), 2)).astype(np.float32)
    s[rng.random(n) < nan_rate] = np.nan
    return s


def write_datacomp_pool(root: Path, n_shards: int = 4, per_shard: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        n = per_shard
        w = rng.choice([0, 50, 150, 199, 200, 256, 640, 1024], n)
        h = rng.choice([0, 64, 199, 200, 300, 700, 2000], n)
        table = pa.table(
            {
                "uid": uids_to_hex_array(random_uids(rng, n)),
                "url": [f"http://127.0.0.1/{s}/{i}.jpg" for i in range(n)],
                "text": [caption(rng) for _ in range(n)],
                "original_width": pa.array(w, pa.int64()),
                "original_height": pa.array(h, pa.int64()),
                "clip_b32_similarity_score": scores(rng, n),
                "clip_l14_similarity_score": scores(rng, n),
                "lang": rng.choice(["en", "en", "en", "de", "fr"], n),
                "source": rng.choice(["photo", "forum", "news"], n),
            }
        )
        pq.write_table(table, root / f"{s:05d}.parquet", row_group_size=64)
    return root


def jpeg(rng: np.random.Generator, size: int = 24) -> bytes:
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_image_pool(
    root: Path, n_shards: int = 3, per_shard: int = 40, seed: int = 0, fail_rate: float = 0.1
) -> Path:
    """img2dataset layout: NNNNN.tar + NNNNN.parquet (+ _stats.json), and attributes/clip/NNNNN.parquet."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "attributes" / "clip").mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        rows, attr = [], []
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                url = f"http://127.0.0.1:8000/img/{s}/{i}.jpg"
                cap = " ".join(rng.choice(WORDS, int(rng.integers(1, 6))))
                ok = rng.random() > fail_rate
                uid = compute_uid(url, cap)
                src = str(rng.choice(["photo", "forum"]))
                row = {
                    "key": key,
                    "url": url,
                    "caption": cap,
                    "status": "success" if ok else "failed_to_download",
                    "error_message": None if ok else "HTTP Error 404: Not Found",
                    "width": 24 if ok else None,
                    "height": 24 if ok else None,
                    "original_width": int(rng.integers(50, 500)) if ok else None,
                    "original_height": int(rng.integers(50, 500)) if ok else None,
                    "sha256": None,
                    "uid": uid,
                    "source": src,
                }
                if ok:
                    img = jpeg(rng)
                    row["sha256"] = hashlib.sha256(img).hexdigest()
                    meta = {k: v for k, v in row.items() if k not in ("uid", "source")}
                    _add(tar, f"{key}.jpg", img)
                    _add(tar, f"{key}.txt", cap.encode())
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
                    attr.append({"uid": uid, "clip_score": float(np.round(rng.normal(0.3, 0.1), 2))})
                rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
        (root / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard}))
        pq.write_table(pa.Table.from_pylist(attr), root / "attributes" / "clip" / f"{s:05d}.parquet")
    return root
