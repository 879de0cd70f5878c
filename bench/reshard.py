"""Benchmark: reshard throughput next to a plain sequential read of the same pool tars.

Builds an img2dataset-style pool (tars of jpg/txt/json + parquet), selects a subset (a fraction of
the samples, some listed twice), then times, each in this process with a warm page cache:

* ``raw read``: every pool tar in 8 MiB reads (the storage floor);
* ``sequential read``: a plain sequential read of every pool tar's members with ``tarfile``;
* ``wds-copy``: the naive resharder: stream every pool tar through a webdataset pipeline, keep the
  subset's samples, write them with ``wds.ShardWriter`` (no upsampling, no plan, no resume);
* ``curate reshard``: plan + positional reads of only the needed members + per-shard atomic writes.

Throughput is MB of pool data read (``read``) or of samples written per second.

    python bench/reshard.py --samples 20000 --image-kb 40
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from curation.core.subset import Subset  # noqa: E402
from curation.core.uid import compute_uid  # noqa: E402
from curation.reshard.run import ReshardConfig, run_reshard  # noqa: E402


def jpegs(rng: np.random.Generator, n: int, kb: int) -> list[bytes]:
    """A few distinct JPEGs of roughly ``kb`` KB (noise compresses poorly, so size by resolution)."""
    side = max(16, int((kb * 1024 / 1.2) ** 0.5))
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=40)
        out.append(buf.getvalue())
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_pool(root: Path, samples: int, per_shard: int, image_kb: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    images = jpegs(rng, 16, image_kb)
    root.mkdir(parents=True)
    uids = []
    for s in range((samples + per_shard - 1) // per_shard):
        rows = []
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(min(per_shard, samples - s * per_shard)):
                key, url = f"{s:05d}{i:04d}", f"http://127.0.0.1/{s}/{i}.jpg"
                caption = f"a photo number {i} of shard {s}"
                uid = compute_uid(url, caption)
                meta = {"key": key, "url": url, "caption": caption, "status": "success"}
                _add(tar, f"{key}.jpg", images[i % len(images)])
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                rows.append(
                    {**meta, "uid": uid, "source": "bench", "original_width": 256, "original_height": 256}
                )
                uids.append(uid)
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
    return uids


def raw_read(pool: Path) -> int:
    """Every tar's bytes in 8 MiB reads: the storage floor, no parsing at all."""
    total = 0
    for path in sorted(pool.glob("*.tar")):
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                total += len(chunk)
    return total


def sequential_read(pool: Path) -> int:
    total = 0
    for path in sorted(pool.glob("*.tar")):
        with tarfile.open(path, "r|") as tar:
            for m in tar:
                f = tar.extractfile(m)
                if f is not None:
                    total += len(f.read())
    return total


def wds_copy(pool: Path, keep: set[str], out: Path, shard_size: int) -> int:
    out.mkdir(parents=True)
    urls = [str(p) for p in sorted(pool.glob("*.tar"))]
    total = 0
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for sample in wds.WebDataset(urls, shardshuffle=False):
            meta = json.loads(sample["json"])
            if compute_uid(meta["url"], meta["caption"]) in keep:
                sample = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
                sink.write(sample)
                total += sum(len(v) for k, v in sample.items() if k != "__key__")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--per-shard", type=int, default=2_000)
    ap.add_argument("--image-kb", type=int, default=40)
    ap.add_argument("--fraction", type=float, default=0.5, help="share of the pool in the subset")
    ap.add_argument("--upsample", type=float, default=0.1, help="share of subset uids listed twice")
    ap.add_argument("--shard-size", type=int, default=2_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_reshard"))
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    pool = args.dir / "pool"
    uids = build_pool(pool, args.samples, args.per_shard, args.image_kb, 0)
    rng = np.random.default_rng(1)
    chosen = [u for u in uids if rng.random() < args.fraction]
    listed = chosen + [u for u in chosen if rng.random() < args.upsample]
    subset = Subset.from_hex(listed, {"name": "bench"}).save(args.dir / "subset.npy")
    pool_mb = sum(p.stat().st_size for p in pool.glob("*.tar")) / 1e6
    sequential_read(pool)  # warm the page cache for every method alike

    t = time.perf_counter()
    raw_bytes = raw_read(pool)
    t_raw = time.perf_counter() - t

    t = time.perf_counter()
    read_bytes = sequential_read(pool)
    t_read = time.perf_counter() - t

    t = time.perf_counter()
    naive_bytes = wds_copy(pool, set(chosen), args.dir / "wds_copy", args.shard_size)
    t_naive = time.perf_counter() - t

    t = time.perf_counter()
    result = run_reshard(
        pool, subset, args.dir / "out", ReshardConfig(shard_size=args.shard_size), workers=args.workers
    )
    t_curate = time.perf_counter() - t
    assert result.complete
    stats = json.loads((args.dir / "out" / "stats.json").read_text())
    written = stats["bytes"] / 1e6

    print(f"pool: {args.samples:,} samples, {pool_mb:.0f} MB of tars; subset: {len(listed):,} entries "
          f"({len(chosen):,} uids, {len(listed) - len(chosen):,} upsampled copies)")  # fmt: skip
    print(f"{'raw read':>22}: {t_raw:7.2f} s  {raw_bytes / 1e6 / t_raw:8.1f} MB/s (8 MiB reads of every tar)")
    read_mbs = read_bytes / 1e6 / t_read
    print(f"{'sequential read':>22}: {t_read:7.2f} s  {read_mbs:8.1f} MB/s (tarfile, every member)")
    print(f"{'webdataset copy':>22}: {t_naive:7.2f} s  {naive_bytes / 1e6 / t_naive:8.1f} MB/s written "
          f"(subset uids once, no upsampling)")  # fmt: skip
    print(f"{'curate reshard':>22}: {t_curate:7.2f} s  {written / t_curate:8.1f} MB/s written "
          f"({stats['total']:,} samples, {stats['shards']} shards, workers={args.workers})")  # fmt: skip
    ratio = (written / t_curate) / (read_bytes / 1e6 / t_read)
    print(f"curate reshard MB/s written / sequential read MB/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
