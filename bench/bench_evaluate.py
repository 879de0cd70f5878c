"""Evaluator speed figures: images/s through the loader+model, retrieval ranking, bootstrap CIs.

    python bench/bench_evaluate.py [--images 600]

Prints figures and ratios measured in this process (no timed assertions anywhere).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.core.models import register_project_models
from tests.evalsuite_factory import classification_samples, write_test_set
from trainer.eval_config import EvalConfig
from trainer.evaluate import evaluate_test_set
from trainer.evaluatees import ModelSource, load_evaluatee
from trainer.retrieval import retrieval_ranks
from trainer.robustness import resample_means
from trainer.suites import Role, TestSetEntry, load_test_set


def bench_loader(n_images: int, tmp: Path) -> None:
    register_project_models()
    torch.manual_seed(0)
    ckpt = tmp / "tiny.pt"
    torch.save(open_clip.create_model("tiny-vit").state_dict(), ckpt)
    write_test_set(tmp / "set", classification_samples([i % 6 for i in range(n_images)]), n_shards=4)
    test_set = load_test_set(tmp / "set", TestSetEntry(name="set", path=".", role=Role.IN_DISTRIBUTION))
    ev = load_evaluatee(ModelSource("clip", "tiny-vit", str(ckpt), "tiny"), EvalConfig(device="cpu"))
    rates = {}
    for workers in (0, 2):
        cfg = EvalConfig(device="cpu", workers=workers, batch_size=64)
        cfg.bootstrap.samples = 0
        evaluate_test_set(ev, test_set, cfg)  # warm-up (classifier weights cached after this)
        start = time.perf_counter()
        evaluate_test_set(ev, test_set, cfg)
        rates[workers] = n_images / (time.perf_counter() - start)
        print(f"zero-shot tiny-vit, {n_images} images, workers={workers}: {rates[workers]:.0f} images/s")
    print(f"  workers=2 / workers=0: {rates[2] / rates[0]:.2f}x")


def bench_retrieval(n_images: int = 5000, per_image: int = 5, dim: int = 512) -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n_images * per_image, dim, generator=gen), dim=-1)
    owner = torch.arange(n_images).repeat_interleave(per_image)
    start = time.perf_counter()
    retrieval_ranks(img, txt, owner)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    order = torch.argsort(txt @ img.T, dim=1, descending=True)  # the sort-based way, one direction only
    (order == owner[:, None]).float().argmax(1)
    naive = time.perf_counter() - start
    print(
        f"retrieval ranks {n_images} images x {n_images * per_image} captions, both directions: {ours:.2f} s "
        f"(full argsort, text->image only: {naive:.2f} s; ratio {naive / ours:.2f}x)"
    )


def bench_bootstrap(n: int = 50_000, reps: int = 1000) -> None:
    correct = np.random.default_rng(0).random(n) < 0.7
    start = time.perf_counter()
    resample_means(correct, reps, np.random.default_rng(0))
    print(
        f"bootstrap {reps} replicates of a {n}-sample test set (ImageNet val size): "
        f"{time.perf_counter() - start:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_loader(args.images, Path(tmp))
    bench_retrieval()
    bench_bootstrap()


if __name__ == "__main__":
    main()
