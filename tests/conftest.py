"""Shared fixtures: small pools written in img2dataset's parquet layout, and an S3 server (s3kit)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.s3kit import auth_moto, moto_server, s3  # noqa: F401  (fixtures)

WORDS = "red blue small large circle square star photo of a the with on near bright".split()


def write_metadata_pool(root: Path, n_shards: int = 3, per_shard: int = 40, seed: int = 0) -> Path:
    """A pool of parquet shards (no tars): captions of varied length, some failures, two sources."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        rows = []
        for i in range(per_shard):
            n_words = rng.choice([0, 1, 2, 3, 5, 8])
            caption = " ".join(rng.choice(WORDS) for _ in range(n_words))
            status = "success" if rng.random() > 0.1 else "failed_to_download"
            rows.append(
                {
                    "key": f"{s:05d}{i:04d}",
                    "url": f"http://127.0.0.1/img/{s}/{i}.jpg",
                    "caption": caption,
                    "status": status,
                    "error_message": None if status == "success" else "HTTP Error 404: Not Found",
                    "original_width": rng.randint(10, 400),
                    "original_height": rng.randint(10, 400),
                    "source": rng.choice(["photo", "forum"]),
                }
            )
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
    return root


@pytest.fixture
def metadata_pool(tmp_path: Path) -> Path:
    return write_metadata_pool(tmp_path / "pool")


def write_image_pool(
    root: Path, captions: list[str], sources: list[str] | None = None, per_shard: int = 10
) -> Path:
    """A pool with images: img2dataset's tar (jpg/txt/json) + parquet layout, coloured squares."""
    import io
    import json
    import tarfile

    from PIL import Image

    from curation.core.uid import compute_uid

    root.mkdir(parents=True, exist_ok=True)
    sources = sources or ["photo"] * len(captions)
    for start in range(0, len(captions), per_shard):
        shard = f"{start // per_shard:05d}"
        rows = []
        with tarfile.open(root / f"{shard}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(captions))):
                key = f"{shard}{i:04d}"
                url = f"http://127.0.0.1/{i}.jpg"
                uid = compute_uid(url, captions[i])
                buf = io.BytesIO()
                Image.new("RGB", (32 + i % 7, 32), ((37 * i) % 255, (91 * i) % 255, 120)).save(buf, "JPEG")
                meta = {"uid": uid, "source": sources[i], "caption": captions[i]}
                for ext, data in (
                    ("jpg", buf.getvalue()),
                    ("txt", captions[i].encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append(
                    {
                        "key": key,
                        "url": url,
                        "caption": captions[i],
                        "status": "success",
                        "error_message": None,
                        "original_width": 32 + i % 7,
                        "original_height": 32,
                        "uid": uid,
                        "source": sources[i],
                    }
                )
        pq.write_table(pa.Table.from_pylist(rows), root / f"{shard}.parquet")
    return root
