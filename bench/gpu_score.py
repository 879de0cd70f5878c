"""GPU throughput of ``curate score``: the full stage against the bare forward, and GPU JPEG decode.

On a machine with one CUDA GPU, from a fresh install (``pip install -e .``; random weights, so
nothing is downloaded; about 2 minutes on one H100):

    python bench/gpu_score.py                       # ViT-B-32, bf16 and fp16 autocast, 8192 pairs

It builds its own pool (img2dataset layout, 256-px JPEGs), then for each precision times, alternating:

* ``bare forward``: the stage's own encoder (:class:`curation.scoring.encode.PairEncoder`) on uint8
  batches already in memory, as many pairs as the pool holds;
* ``full stage``: every shard through the shard runner as an engine worker runs it (tar read, decode
  in DataLoader processes, tokenize, encode, write the parquet, stats, marker);

and prints pairs/s of both and their ratio (1.0 = decoding and I/O entirely hidden behind the model).
Then JPEG decode: the stage's CPU decoder in this process (images/s on one core, and projected on the
stage's loader processes) against ``torchvision.io.decode_jpeg`` on the GPU (nvJPEG, batched, with
the resize and crop on the GPU), and the largest score difference between the two inputs.
NVIDIA DALI is reported as present or not; it is not needed.

The CPU run is the smoke test that keeps this script from rotting (tests/test_bench_gpu_score.py):

    python bench/gpu_score.py --device cpu --pairs 256

The last line is ``RESULT {json}`` with every figure, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from curation.core.runner import process_shard
from curation.scoring import ScoreConfig, ScoreJob
from tests.image_pool import write_image_pool


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None, help="a tag or checkpoint (default: random weights)")
    ap.add_argument("--precision", default=None, help="comma list; default bf16,fp16 on a GPU, fp32 on CPU")
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--shards", type=int, default=None, help="default: 4 on a GPU, 1 on CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 256 on a GPU, 64 on CPU")
    ap.add_argument("--image-size", type=int, default=256, help="side of the pool's JPEGs (img2dataset: 256)")
    ap.add_argument("--loader-workers", type=int, default=None, help="default: the stage's auto rule")
    ap.add_argument("--jpeg-draft", type=int, default=None, help="ScoreConfig.jpeg_draft (null = exact)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--decode-images", type=int, default=512, help="JPEGs in the decode comparison")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device (use --device cpu for the smoke run)")
    args.precision = args.precision or ("bf16,fp16" if gpu else "fp32")
    args.shards = args.shards or (4 if gpu else 1)
    args.batch_size = args.batch_size or (256 if gpu else 64)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(job: ScoreJob, pairs: int, batch_size: int) -> float:
    """pairs/s of the stage's encoder on one in-memory batch, re-encoded until ``pairs`` are done."""
    w = job._worker
    assert w is not None
    images = torch.randint(0, 256, (batch_size, *w.decoder.prep.size, 3), dtype=torch.uint8)
    if w.encoder.device.type == "cuda":
        images = images.pin_memory()  # as the stage's DataLoader delivers them
    captions = [f"a photo of a {c} shape number {i}" for i, c in enumerate(["red", "green", "blue"] * 4)]
    tokens = w.collate.tokenizer((captions * (batch_size // len(captions) + 1))[:batch_size])
    w.encoder(images, tokens)[2].cpu()  # warm-up at the full batch shape
    done, start = 0, time.perf_counter()
    while done < pairs:
        n = min(batch_size, pairs - done)
        w.encoder(images[:n], tokens[:n])[2].cpu()  # .cpu() waits for the device
        done += n
    return pairs / (time.perf_counter() - start)


def full_stage(job: ScoreJob, pairs: int) -> tuple[float, float]:
    """pairs/s of every shard through the shard runner, and the share of time the model waited."""
    shutil.rmtree(job.output_dir(), ignore_errors=True)
    start = time.perf_counter()
    outcomes = [process_shard(job, shard) for shard in job.shards()]
    seconds = time.perf_counter() - start
    if any(o.status != "done" for o in outcomes):
        raise SystemExit(f"stage failed: {[o.error for o in outcomes if o.error]}")
    seen = sum(o.stats[0].total.seen for o in outcomes)
    if seen != pairs:
        raise SystemExit(f"the stage scored {seen} pairs, expected {pairs}")
    waited = sum(o.stats[0].extra["seconds_data_wait"] for o in outcomes)
    return pairs / seconds, waited / seconds


def make_job(pool: Path, args: argparse.Namespace, precision: str) -> ScoreJob:
    cfg = ScoreConfig(
        model=args.model,
        pretrained=args.pretrained,
        device=args.device,
        precision=precision,
        batch_size=args.batch_size,
        loader_workers=args.loader_workers,
        jpeg_draft=args.jpeg_draft,
        embeddings=True,
    )
    job = ScoreJob(pool, cfg)
    job.prepare()
    job.setup()
    return job


def stage_vs_forward(pool: Path, pairs: int, args: argparse.Namespace, precision: str) -> dict:
    job = make_job(pool, args, precision)
    w = job._worker
    assert w is not None
    bare, full, waits = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_forward(job, pairs, args.batch_size))
        rate, wait = full_stage(job, pairs)
        full.append(rate)
        waits.append(wait)
    result = {
        "precision": w.encoder.precision,
        "loader_workers": w.loader.workers,
        "bare_pairs_per_s": max(bare),
        "full_pairs_per_s": max(full),
        "ratio": max(full) / max(bare),
        "model_waited": min(waits),
        "bare_all": bare,
        "full_all": full,
    }
    print(
        f"{args.model} {result['precision']:>4}: bare forward {result['bare_pairs_per_s']:9.1f} pairs/s | "
        f"full stage {result['full_pairs_per_s']:9.1f} pairs/s | ratio {result['ratio']:.3f} "
        f"(best of {args.repeats}; loader workers {result['loader_workers']}, "
        f"model waited for data {result['model_waited']:.0%})",
        flush=True,
    )
    return result


def pool_jpegs(pool: Path, n: int) -> list[bytes]:
    out: list[bytes] = []
    for tar_path in sorted(pool.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                f = tar.extractfile(m) if m.name.endswith(".jpg") else None
                if f is not None:
                    out.append(f.read())
                if len(out) == n:
                    return out
    return out


def decode_comparison(pool: Path, args: argparse.Namespace, precision: str) -> dict:
    """The stage's CPU decoder against torchvision's decode_jpeg on the device, same JPEGs."""
    import torchvision
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    job = make_job(pool, args, precision)
    w = job._worker
    assert w is not None
    device, (h, wd) = w.encoder.device, w.decoder.prep.size
    jpegs = pool_jpegs(pool, args.decode_images)
    start = time.perf_counter()
    cpu_images = [w.decoder({"__key__": str(i), "jpg": b})[1] for i, b in enumerate(jpegs)]
    cpu_rate = len(jpegs) / (time.perf_counter() - start)

    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    dev_images: list[torch.Tensor] = []

    def gpu_decode() -> None:
        dev_images.clear()
        for i in range(0, len(datas), args.batch_size):
            decoded = decode_jpeg(datas[i : i + args.batch_size], device=device)  # [3, H, W] uint8 each
            for img in decoded:
                img = F.resize(img, [min(h, wd)], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
                dev_images.append(F.center_crop(img, [h, wd]).permute(1, 2, 0))
        sync(device)

    gpu_decode()  # warm-up: nvJPEG handles and kernels
    start = time.perf_counter()
    gpu_decode()
    dev_rate = len(jpegs) / (time.perf_counter() - start)

    n = min(len(jpegs), args.batch_size)
    tokens = w.collate.tokenizer(["a photo of a shape"] * n)
    cpu_scores = w.encoder(torch.from_numpy(np.stack(cpu_images[:n])), tokens)[2].float().cpu()
    dev_scores = w.encoder(torch.stack(dev_images[:n]), tokens)[2].float().cpu()
    diff = float((cpu_scores - dev_scores).abs().max())
    loaders = max(w.loader.workers, 1)
    where = "GPU (nvJPEG)" if device.type == "cuda" else "CPU"
    print(
        f"jpeg decode + resize: stage's CPU decoder {cpu_rate:8.1f} images/s on 1 core "
        f"(~{cpu_rate * loaders:.0f} on its {loaders} loader processes) | "
        f"torchvision {torchvision.__version__} decode_jpeg on {where} {dev_rate:8.1f} images/s | "
        f"ratio {dev_rate / cpu_rate:.2f} per core, "
        f"{dev_rate / (cpu_rate * loaders):.2f} against the loaders | max |score diff| {diff:.2e}",
        flush=True,
    )
    return {
        "cpu_decode_images_per_s": cpu_rate,
        "cpu_decode_projected_images_per_s": cpu_rate * loaders,
        "device_decode_images_per_s": dev_rate,
        "device_decode_where": where,
        "decode_ratio_per_core": dev_rate / cpu_rate,
        "decode_ratio_vs_loaders": dev_rate / (cpu_rate * loaders),
        "max_score_diff": diff,
    }


def dali_status() -> str:
    try:
        import nvidia.dali  # type: ignore[import-not-found]
    except ImportError:
        return "not installed (optional: pip install nvidia-dali-cuda120)"
    return f"installed ({nvidia.dali.__version__}); not timed by this script"


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={args.device} ({name}) model={args.model} pretrained={args.pretrained} "
        f"pairs={args.pairs} shards={args.shards} batch={args.batch_size} jpeg={args.image_size}px "
        f"cores={len(os.sched_getaffinity(0))} load_avg={os.getloadavg()[0]:.1f} torch={torch.__version__}",
        flush=True,
    )
    results: dict = {"device": name, "model": args.model, "pairs": args.pairs, "runs": []}
    with tempfile.TemporaryDirectory(prefix="gpu-score-") as tmp:
        per_shard = max(1, args.pairs // args.shards)
        pool = write_image_pool(
            Path(tmp) / "pool", n_shards=args.shards, per_shard=per_shard, image_size=args.image_size
        )
        pairs = per_shard * args.shards
        print(f"pool: {pairs} pairs in {time.perf_counter() - t0:.1f} s", flush=True)
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        for precision in precisions:
            results["runs"].append(stage_vs_forward(pool, pairs, args, precision))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["decode"] = decode_comparison(pool, args, precisions[0])
    results["dali"] = dali_status()
    results["seconds"] = time.perf_counter() - t0
    print(f"DALI: {results['dali']}")
    print(f"total {results['seconds']:.1f} s")
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
