"""Benchmark: SemDeDup's time and peak memory next to faiss k-means alone, on random embeddings.

Writes ``--n`` random unit vectors of ``--dim`` float16 values to a file (in blocks, never whole in
memory), then runs, each in a fresh subprocess so peak RSS is its own:

* ``faiss k-means``: the matrix loaded as float32, ``faiss.Kmeans.train`` (which subsamples to
  ``k * max_points_per_centroid`` itself) and the nearest centroid of every row: the clustering
  alone, as one would write it with faiss;
* ``semdedup``: :func:`curation.filtering.semdedup.semdedup` on the file: the same k-means on a
  sample, streamed assignment, and the per-cluster pairwise pass (clusters one at a time).

Prints seconds and peak RSS (``ru_maxrss``) of each and the ratios; asserts nothing.

    python bench/semdedup.py                      # 10^6 x 512, k=1000
    python bench/semdedup.py --n 100000 --k 100   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def write_random(path: Path, n: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, n, 100_000):
            x = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype(np.float16).tobytes())


def run_child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process: ``args.child`` is ``kmeans`` or ``semdedup``."""
    from curation.filtering.faiss_index import kmeans, nearest_centroid
    from curation.filtering.semdedup import EmbeddingFile, SemDedupParams, semdedup

    path = Path(args.file)
    start = time.perf_counter()
    if args.child == "kmeans":
        x = np.fromfile(path, dtype=np.float16).reshape(args.n, args.dim).astype(np.float32)
        centroids = kmeans(x, args.k, args.niter, 0, True, args.max_points_per_centroid)
        cluster = nearest_centroid(centroids, x, spherical=True)
        extra = {"clusters": len(np.unique(cluster))}
    else:
        emb = EmbeddingFile(path, args.n, args.dim)
        res = semdedup(emb, SemDedupParams(args.k, args.niter, 0, args.max_points_per_centroid))
        extra = {"clusters": len(np.unique(res.cluster)), "dup_at_0.05": int((res.max_sim > 0.95).sum())}
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"seconds": seconds, "peak_bytes": peak, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--niter", type=int, default=10)
    p.add_argument("--max-points-per-centroid", type=int, default=64)
    p.add_argument("--child", choices=["kmeans", "semdedup"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-semdedup-") as tmp:
        path = Path(tmp) / "emb.f16"
        t0 = time.perf_counter()
        write_random(path, args.n, args.dim, 0)
        print(f"{args.n:,} x {args.dim} float16 embeddings ({path.stat().st_size / 2**30:.2f} GiB) "
              f"written in {time.perf_counter() - t0:.1f} s; k={args.k}, niter={args.niter}, "
              f"max_points_per_centroid={args.max_points_per_centroid}")  # fmt: skip
        results = {}
        for child in ("kmeans", "semdedup"):
            cmd = [sys.executable, __file__, "--child", child, "--file", str(path)]
            cmd += ["--n", str(args.n), "--dim", str(args.dim), "--k", str(args.k)]
            cmd += ["--niter", str(args.niter)]
            cmd += ["--max-points-per-centroid", str(args.max_points_per_centroid)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[child] = json.loads(out.strip().splitlines()[-1])
    print(f"{'run':<16}{'seconds':>10}{'peak RSS GiB':>14}")
    for name, r in (("faiss k-means", results["kmeans"]), ("semdedup", results["semdedup"])):
        print(f"{name:<16}{r['seconds']:>10.1f}{r['peak_bytes'] / 2**30:>14.2f}")
    k, s = results["kmeans"], results["semdedup"]
    print(f"time ratio semdedup / k-means: {s['seconds'] / k['seconds']:.2f} (target <= 3)")
    print(f"peak memory semdedup: {s['peak_bytes'] / 2**30:.2f} GiB (target < 2); "
          f"semantic duplicates at eps 0.05: {s['dup_at_0.05']}")  # fmt: skip


if __name__ == "__main__":
    main()
