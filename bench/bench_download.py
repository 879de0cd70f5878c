"""Download throughput on the synthetic crawl served on 127.0.0.1.

Generates a synthetic crawl (or reuses ``--synth DIR``), serves it, downloads it into a fresh pool
with ``conf/download/synthetic.yaml`` and prints urls/s and images/s: while img2dataset downloads
(its shard stats: first start to last end) and over the whole command (with process start-up).
Usage (from the repository root):
    python -m bench.bench_download --pairs 3000 --processes 2 --threads 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from curation.core.config import CONF_DIR, load_config
from curation.download import DownloadConfig, download_crawl


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--synth", type=Path, help="an existing `curate synth` output to reuse")
    args = parser.parse_args()

    from curation.synth import SynthConfig, generate, rebase_urls, serve

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp_name:
        tmp = Path(tmp_name)
        synth = args.synth
        if synth is None:
            synth = tmp / "synth"
            sets = [f"n_pairs={args.pairs}", "suite.per_class=1", "suite.retrieval_pairs=1", "seed_set.n=1",
                    "imagenet.per_class=1"]  # fmt: skip
            generate(load_config(SynthConfig, CONF_DIR / "synth" / "default.yaml", sets), synth)
        with serve(synth) as server:
            pq.write_table(
                rebase_urls(pq.read_table(synth / "crawl.parquet"), server.base_url), tmp / "crawl.parquet"
            )
            cfg = load_config(
                DownloadConfig,
                CONF_DIR / "download" / "synthetic.yaml",
                [f"downloader.processes_count={args.processes}", f"downloader.thread_count={args.threads}"],
            )
            start = time.perf_counter()
            report = download_crawl(tmp / "crawl.parquet", tmp / "pool", cfg)
            wall = time.perf_counter() - start
        shards = [json.loads(p.read_text()) for p in sorted((tmp / "pool").glob("*_stats.json"))]
    urls = sum(s["count"] for s in shards)
    images = sum(s["successes"] for s in shards)
    busy = max(s["end_time"] for s in shards) - min(s["start_time"] for s in shards)
    print(f"urls: {urls}  images: {images}  shards: {len(shards)}  failed shards: {len(report.failed)}")
    print(f"processes x threads: {args.processes} x {args.threads}")
    print(f"while downloading: {busy:.1f} s, {urls / busy:.0f} urls/s, {images / busy:.0f} images/s")
    print(f"whole command:     {wall:.1f} s, {urls / wall:.0f} urls/s, {images / wall:.0f} images/s")
    print(f"start-up and accounting share of the command: {1 - busy / wall:.0%}")


if __name__ == "__main__":
    main()
