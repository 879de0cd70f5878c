"""A small synthetic crawl and its pool, for tests that measure filters and selection against ground truth.

``small_crawl`` generates a crawl (``curate synth`` with tiny evaluation sets). ``write_synth_pool``
writes the pool that ``curate download -c conf/download/synthetic.yaml`` would make of it, without
the HTTP round trip (about 40 s of img2dataset start-up for a few thousand pairs): every
downloadable url's file as served (that config stores served JPEGs byte for byte; other formats
are re-encoded as JPEG at img2dataset's default quality 95), failures as failed rows. That the
real download gives these outcomes is tested in tests/test_synth.py and tests/test_download.py.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from curation.core.config import CONF_DIR, load_config
from curation.synth.build import generate
from curation.synth.config import SynthConfig

TINY_SETS = ["suite.per_class=2", "suite.retrieval_pairs=8", "seed_set.n=10", "imagenet.per_class=2"]
SOURCES = ("photo", "clipart", "forum")


def small_crawl(out: Path, n_pairs: int, *overrides: str) -> Path:
    """A crawl of ``n_pairs`` pairs with tiny evaluation sets (rendered in this process)."""
    sets = [*TINY_SETS, f"n_pairs={n_pairs}", "workers=1", "slow_delay_s=0.1", *overrides]
    generate(load_config(SynthConfig, CONF_DIR / "synth" / "default.yaml", sets), out)
    return out


def served_file(synth: Path, url: str, faults: dict[str, dict]) -> Path:
    path = "/" + url.split("/", 3)[3]
    return synth / "web" / str(faults.get(path, {}).get("location", path)).lstrip("/")


def as_stored(data: bytes) -> tuple[bytes, int, int]:
    """What the synthetic download config stores: JPEGs as they are, anything else re-encoded."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            return data, im.width, im.height
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue(), im.width, im.height


def write_synth_pool(synth: Path, root: Path, shard_size: int = 1000) -> Path:
    """The img2dataset pool (tars + parquet) of ``synth``'s crawl, keyed and shaped as a download."""
    crawl = pq.read_table(synth / "crawl.parquet").to_pylist()
    truth = pq.read_table(synth / "ground_truth.parquet", columns=["uid", "downloadable"]).to_pylist()
    downloadable = {r["uid"]: r["downloadable"] for r in truth}
    faults = json.loads((synth / "faults.json").read_text())
    root.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(crawl), shard_size)):
        rows = []
        with wds.TarWriter(str(root / f"{shard:05d}.tar")) as tar:
            for i, r in enumerate(crawl[start : start + shard_size], start):
                key = f"{shard:05d}{i - start:04d}"
                row = {"key": key, "url": r["url"], "caption": r["text"]}
                row |= {"uid": r["uid"], "source": r["source"]}
                if not downloadable[r["uid"]]:
                    failed = {"status": "failed_to_download", "error_message": "fault", "width": None}
                    rows.append({**row, **failed, "height": None, "sha256": None})
                    continue
                data, w, h = as_stored(served_file(synth, r["url"], faults).read_bytes())
                meta = {**row, "status": "success", "width": w, "height": h}
                tar.write({"__key__": key, "jpg": data, "txt": r["text"], "json": json.dumps(meta).encode()})
                rows.append({**meta, "error_message": None, "sha256": hashlib.sha256(data).hexdigest()})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{shard:05d}.parquet")
    return root
