"""Throughput of ``curate score``: the full stage against the bare model forward, same process.

    python bench/score_throughput.py --model tiny-vit --pairs 2048
    python bench/score_throughput.py --model ViT-B-32 --pairs 256 --batch-size 64

Full stage = what one engine worker does per shard through the shard runner: read the tar
(webdataset), decode + preprocess in DataLoader workers, tokenize, encode both towers, normalise,
score, write the parquet atomically, write stats and marker. Bare forward = the same encoder
(same model, device, precision, batch size) on tensors already in memory, timed twice on CPU:
pinned to the torch thread count the stage's model process gets, and with every core. The
headline ratio compares like with like (full / bare at the stage's thread count): it says how
well tar reading, decoding and writing are hidden behind the model (1.0 = entirely). The second
ratio, against the faster of the two bare forwards, also charges the stage for the cores its
decode processes take from the model. Passes alternate (bare, bare, full, ...) so a change in
machine load hits all three; medians with [min .. max] over passes are reported, and the ratios
are medians of per-pass ratios. Random weights are fine: speed does not depend on them.

It also prints the bounds that CPU costs put on the stage: the decode bound (loader processes x
1 / decode CPU per pair), the core bound (cores / (model + decode CPU per pair)) and how close the
full stage came to the tightest of them and the model's own rate (``bound ratio``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from curation.core.runner import process_shard
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
    ap.add_argument("--jpeg-draft", type=int, default=None, help="ScoreConfig.jpeg_draft (null = exact)")
    ap.add_argument("--no-embeddings", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    return ap.parse_args()


@dataclass
class Timing:
    """Wall-clock and CPU seconds (this process and its finished children: the loader workers)."""

    pairs: int
    wall: float
    cpu: float
    cpu_children: float
    waited: float = 0.0

    @property
    def rate(self) -> float:
        return self.pairs / self.wall

    @property
    def cpu_ms(self) -> float:
        return 1000 * (self.cpu + self.cpu_children) / self.pairs


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def timed(pairs: int) -> Iterator[Timing]:
    t = Timing(pairs, time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN))
    yield t
    t.wall = time.perf_counter() - t.wall
    t.cpu = _cpu(resource.RUSAGE_SELF) - t.cpu
    t.cpu_children = _cpu(resource.RUSAGE_CHILDREN) - t.cpu_children


def bare_forward(job: ScoreJob, pairs: int, batch_size: int) -> Timing:
    """The stage's own encoder on one in-memory batch, re-encoded until ``pairs`` are done."""
    w = job._worker
    assert w is not None
    images = torch.randint(0, 256, (batch_size, *w.decoder.prep.size, 3), dtype=torch.uint8)
    captions = [f"a photo of a {c} circle near the {p}" for c, p in zip("rgby" * 3, "lcr" * 4, strict=True)]
    tokens = w.collate.tokenizer((captions * (batch_size // len(captions) + 1))[:batch_size])
    done = 0
    with timed(pairs) as t:
        while done < pairs:
            n = min(batch_size, pairs - done)
            _, _, score = w.encoder(images[:n], tokens[:n])
            score.cpu()  # wait for the device
            done += n
    return t


def full_stage(job: ScoreJob, pairs: int) -> Timing:
    """Every shard through the shard runner, as an engine worker runs them."""
    shutil.rmtree(job.output_dir(), ignore_errors=True)
    with timed(pairs) as t:
        outcomes = [process_shard(job, shard) for shard in job.shards()]
    if any(o.status != "done" for o in outcomes):
        raise SystemExit(f"stage failed: {[o.error for o in outcomes if o.error]}")
    assert sum(o.stats[0].total.seen for o in outcomes) == pairs
    t.waited = sum(o.stats[0].extra["seconds_data_wait"] for o in outcomes)
    return t


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
            jpeg_draft=args.jpeg_draft,
            embeddings=not args.no_embeddings,
        )
        job = ScoreJob(pool, cfg)
        job.prepare()
        job.setup()
        assert job._worker is not None
        enc = job._worker.encoder
        stage_threads, all_cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
        print(
            f"model={args.model} device={enc.device} precision={enc.precision} batch={args.batch_size} "
            f"pairs={pairs} shards={args.shards} jpeg={args.image_size}px "
            f"loader_workers={args.loader_workers} threads={stage_threads} jpeg_draft={args.jpeg_draft} "
            f"cores={all_cores} "
            f"load_avg={os.getloadavg()[0]:.1f}"
        )
        bare_forward(job, args.batch_size, args.batch_size)  # warm-up at full batch shape
        same, every, full = [], [], []
        for r in range(args.repeats):
            same.append(bare_forward(job, pairs, args.batch_size))
            torch.set_num_threads(all_cores)
            every.append(bare_forward(job, pairs, args.batch_size))
            torch.set_num_threads(stage_threads)
            full.append(full_stage(job, pairs))
            print(
                f"  pass {r}: bare {same[-1].rate:7.1f} ({stage_threads} thr) {every[-1].rate:7.1f} "
                f"({all_cores} thr)  full {full[-1].rate:7.1f} pairs/s  "
                f"(data wait {full[-1].waited / full[-1].wall:.0%})  "
                f"ratio {full[-1].rate / same[-1].rate:.3f}"
            )
        report(same, every, full, stage_threads, args.loader_workers)


def spread(xs: list[float], digits: int = 1) -> str:
    return f"{statistics.median(xs):8.{digits}f}  [{min(xs):.{digits}f} .. {max(xs):.{digits}f}]"


def report(same: list[Timing], every: list[Timing], full: list[Timing], threads: int, loaders: int) -> None:
    """Medians with [min .. max] over the passes; the headline ratio is against the same thread count.

    CPU times hold up on a shared machine where wall-clock rates do not; from them, the ratio the
    stage would reach if its model process and each decode process had cores of their own.
    """
    cores = len(os.sched_getaffinity(0))
    like = [f.rate / b.rate for f, b in zip(full, same, strict=True)]
    best = [f.rate / max(b.rate, a.rate) for f, b, a in zip(full, same, every, strict=True)]
    cpu_b, cpu_f = (statistics.median(x.cpu_ms for x in xs) for xs in (same, full))
    cpu_loaders = statistics.median(1000 * x.cpu_children / x.pairs for x in full)
    wait = statistics.median(x.waited / x.wall for x in full)
    print(f"bare forward   {spread([x.rate for x in same])} pairs/s  on the stage's {threads} thread(s)")
    print(f"bare forward   {spread([x.rate for x in every])} pairs/s  with all {cores} cores")
    print(f"full stage     {spread([x.rate for x in full])} pairs/s  (model waited for data {wait:.0%})")
    print(f"ratio          {spread(like, 3)}   full / bare on the stage's {threads} thread(s): like for like")
    print(f"ratio          {spread(best, 3)}   full / the faster bare forward (either thread count)")
    print(
        f"cpu per pair   {cpu_b:8.2f} ms bare, {cpu_f:.2f} ms full "
        f"(model process {cpu_f - cpu_loaders:.2f} + decode processes {cpu_loaders:.2f})"
    )
    print(f"cpu ratio      {cpu_b / cpu_f:8.3f}   bare / full CPU time per pair (all the work, any schedule)")
    slowest = max(cpu_f - cpu_loaders, cpu_loaders / max(loaders, 1))
    print(
        f"free cores     {cpu_b / slowest:8.3f}   bare / the busiest process's CPU per pair: like-for-like "
        "ratio with a core per process (projected from CPU times)"
    )
    bounds = decode_bounds(cpu_b, cpu_loaders, loaders, cores, statistics.median(x.rate for x in same))
    full_rate = statistics.median(x.rate for x in full)
    print(
        f"decode bound   {bounds['decode']:8.1f} pairs/s  {max(loaders, 1)} decode process(es) at "
        f"{cpu_loaders:.2f} ms CPU per pair (a core each)"
    )
    print(
        f"core bound     {bounds['cores']:8.1f} pairs/s  {cores} cores / (model {cpu_b:.2f} + decode "
        f"{cpu_loaders:.2f} ms CPU per pair)"
    )
    print(
        f"bound ratio    {full_rate / bounds['tightest']:8.3f}   full stage / the tightest of bare forward, "
        f"decode and core bounds ({bounds['tightest']:.1f} pairs/s)"
    )
    print(f"load avg       {os.getloadavg()[0]:8.1f}   (1 min, at the end; {cores} cores)")


def decode_bounds(model_ms: float, decode_ms: float, loaders: int, cores: int, bare_rate: float) -> dict:
    """The most pairs/s the stage can reach from its CPU costs (docs/scoring.md, "Threads on a small CPU").

    Decode processes (inline decoding when ``loaders`` is 0) deliver at most ``loaders`` cores of
    decoding; all processes together get at most ``cores`` cores of CPU for model plus decode.
    """
    decode = 1000 * max(loaders, 1) / max(decode_ms, 1e-9)
    core = 1000 * cores / max(model_ms + decode_ms, 1e-9)
    return {"decode": decode, "cores": core, "tightest": min(decode, core, bare_rate)}


if __name__ == "__main__":
    main()
