"""Throughput of ``curate score``: the full stage against the bare model forward, same process.

    python bench/score_throughput.py --model tiny-vit --pairs 2048
    python bench/score_throughput.py --model ViT-B-32 --pairs 256 --batch-size 64

Full stage = what one engine worker does per shard through the shard runner: read the tar
(webdataset), decode + preprocess in DataLoader workers, tokenize, encode both towers, normalise,
score, write the parquet atomically, write stats and marker. Bare forward = the same encoder
(same model, device, precision, batch size) on tensors already in memory, timed twice on CPU:
with the stage's thread count and with every core (the model alone may use them all). Passes
alternate (bare, full, bare, full, ...) so a change in machine load hits both; medians are
reported. Random weights are fine: speed does not depend on them. The ratio full/bare says how
well decoding is hidden behind the model (1.0 = entirely); the strict one is against every core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from curation.runner import process_shard
from curation.scoring import ScoreConfig, ScoreJob
from tests.image_pool import write_image_pool


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=2048, help="pairs per pass (split into --shards)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=256, help="side of the pool's JPEGs (img2dataset: 256)")
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the model process")
    ap.add_argument("--fast-decode", action="store_true")
    ap.add_argument("--no-embeddings", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    return ap.parse_args()


def bare_forward(job: ScoreJob, pairs: int, batch_size: int) -> float:
    """Pairs/s of the stage's own encoder on one in-memory batch, re-encoded until ``pairs`` are done."""
    w = job._worker
    assert w is not None
    images = torch.randn(batch_size, 3, *w.decoder.image_size)
    captions = [
        f"a photo of a {c} circle near the {p}" for c, p in zip("rgby" * 64, "lcr" * 86, strict=False)
    ]
    tokens = w.collate.tokenizer((captions * (batch_size // len(captions) + 1))[:batch_size])
    done, start = 0, time.perf_counter()
    while done < pairs:
        n = min(batch_size, pairs - done)
        _, _, score = w.encoder(images[:n], tokens[:n])
        score.cpu()  # wait for the device
        done += n
    return pairs / (time.perf_counter() - start)


def full_stage(job: ScoreJob, pairs: int) -> tuple[float, float]:
    """Pairs/s through the shard runner, and the fraction of time the model waited for data."""
    shutil.rmtree(job.output_dir(), ignore_errors=True)
    start = time.perf_counter()
    outcomes = [process_shard(job, shard) for shard in job.shards()]
    seconds = time.perf_counter() - start
    if any(o.status != "done" for o in outcomes):
        raise SystemExit(f"stage failed: {[o.error for o in outcomes if o.error]}")
    seen = sum(o.stats[0].total.seen for o in outcomes)
    assert seen == pairs, (seen, pairs)
    waited = sum(o.stats[0].extra["seconds_data_wait"] for o in outcomes)
    return pairs / seconds, waited / seconds


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = write_image_pool(
            Path(tmp) / "pool",
            n_shards=args.shards,
            per_shard=args.pairs // args.shards,
            image_size=args.image_size,
        )
        pairs = args.pairs // args.shards * args.shards
        cfg = ScoreConfig(
            model=args.model,
            pretrained=None,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            loader_workers=args.loader_workers,
            threads=args.threads,
            fast_decode=args.fast_decode,
            embeddings=not args.no_embeddings,
        )
        job = ScoreJob(pool, cfg)
        job.prepare()
        job.setup()
        assert job._worker is not None
        enc = job._worker.encoder
        print(
            f"model={args.model} device={enc.device} precision={enc.precision} batch={args.batch_size} "
            f"pairs={pairs} jpeg={args.image_size}px loader_workers={args.loader_workers} "
            f"threads={torch.get_num_threads()} fast_decode={args.fast_decode} cores={os.cpu_count()} "
            f"load_avg={os.getloadavg()[0]:.1f}"
        )
        stage_threads, all_cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
        bare_forward(job, args.batch_size, args.batch_size)  # warm-up at full batch shape
        bare, bare_all, full, wait = [], [], [], []
        for r in range(args.repeats):
            bare.append(bare_forward(job, pairs, args.batch_size))
            torch.set_num_threads(all_cores)
            bare_all.append(bare_forward(job, pairs, args.batch_size))
            torch.set_num_threads(stage_threads)
            f, w = full_stage(job, pairs)
            full.append(f)
            wait.append(w)
            print(
                f"  pass {r}: bare {bare[-1]:8.1f} ({stage_threads} threads) {bare_all[-1]:8.1f} "
                f"({all_cores}) pairs/s   full {f:8.1f} pairs/s   data wait {w:5.1%}"
            )
        b, b_all, f = statistics.median(bare), statistics.median(bare_all), statistics.median(full)
        print(f"bare forward   {b:8.1f} pairs/s with the stage's {stage_threads} threads")
        print(f"bare forward   {b_all:8.1f} pairs/s with all {all_cores} cores")
        print(f"full stage     {f:8.1f} pairs/s   (model waited for data {statistics.median(wait):.1%})")
        print(f"ratio          {f / b_all:8.3f}   full / bare with all cores")
        print(f"ratio          {f / b:8.3f}   full / bare with the stage's threads")
        print(f"load avg       {os.getloadavg()[0]:8.1f}   (1 min, at the end; {all_cores} cores)")


if __name__ == "__main__":
    main()
