"""A tiny world for ablation tests: a scored image pool, labelled training shards, a suite.

The pool's images are the evaluator fixture's class drawings (tests/evalsuite_factory.py); a
quarter of the captions are mismatched (they name another class) and get a low ``clip_score`` in
the score's attribute table, as a reference CLIP would give them, so the top-k sets are cleaner
than the random controls.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.uid import compute_uid
from tests.evalsuite_factory import CLASSNAMES, draw, make_suite

# what `curate score` writes with the tiny reference CLIP: attributes/SCORE/, column SCORE
SCORE = "clip_score_tiny_vit"


def _jpeg(label: int, variant: int) -> bytes:
    buf = io.BytesIO()
    draw(label, variant).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_quality_pool(
    root: Path, n: int = 96, per_shard: int = 48, seed: int = 0, sources: tuple[str, ...] = ("photo",)
) -> Path:
    """img2dataset-layout pool (tar + parquet) with ``attributes/SCORE/NNNNN.parquet`` (uid, SCORE).

    Sample ``i`` comes from ``sources[i % len(sources)]``.
    """
    rng = np.random.default_rng(seed)
    (root / "attributes" / SCORE).mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, n, per_shard)):
        rows, attr = [], []
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                label = i % len(CLASSNAMES)
                junk = rng.random() < 0.25
                named = (label + 1 + int(rng.integers(0, 5))) % len(CLASSNAMES) if junk else label
                caption = f"a photo of a {CLASSNAMES[named]}"
                key, url = f"{s:05d}{i:04d}", f"http://127.0.0.1/{i}.jpg"
                uid = compute_uid(url, caption)
                _add(tar, f"{key}.jpg", _jpeg(label, 2000 + i))
                _add(tar, f"{key}.txt", caption.encode())
                _add(
                    tar,
                    f"{key}.json",
                    json.dumps(
                        {"uid": uid, "source": sources[i % len(sources)], "caption": caption}
                    ).encode(),
                )
                rows.append(
                    {
                        "key": key,
                        "url": url,
                        "caption": caption,
                        "status": "success",
                        "error_message": None,
                        "width": 64,
                        "height": 64,
                        "original_width": 64,
                        "original_height": 64,
                        "uid": uid,
                        "source": sources[i % len(sources)],
                    }
                )
                score = rng.normal(0.12, 0.03) if junk else rng.normal(0.32, 0.03)
                attr.append({"uid": uid, SCORE: float(score)})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(attr), root / "attributes" / SCORE / f"{s:05d}.parquet")
    return root


def write_labelled_shards(root: Path, n: int = 96) -> Path:
    """Training shards with ``KEY.cls`` (the in-distribution training set of the supervised baselines)."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i in range(n):
            label = i % len(CLASSNAMES)
            key = f"{i:06d}"
            _add(tar, f"{key}.jpg", _jpeg(label, 5000 + i))
            _add(tar, f"{key}.txt", f"a photo of a {CLASSNAMES[label]}.".encode())
            _add(tar, f"{key}.json", json.dumps({"uid": f"{i:032x}", "source": "imagenet"}).encode())
            _add(tar, f"{key}.cls", str(label).encode())
    (root / "sizes.json").write_text(json.dumps({"00000.tar": n}))
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    return root


def write_world(root: Path) -> dict[str, Path]:
    return {
        "pool": write_quality_pool(root / "pool"),
        "baseline": write_labelled_shards(root / "imagenet_train"),
        "suite": make_suite(root / "suite", corrupt_in_shift=False),
    }
