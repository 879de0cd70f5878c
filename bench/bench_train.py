"""Tiny-preset training figures: wall time, CPU time, samples/s, and zero-shot accuracy reached.

    python bench/bench_train.py out/synth/seed --testset out/synth/suite/synth_id [--set batch_size=64]

Trains the preset on SHARDS (equal_samples: the preset's budget unless --samples-seen) into a
temporary run directory, then classifies the test set (CLIP_benchmark layout: classnames.txt,
zeroshot_classification_templates.txt, test/*.tar) zero-shot with open_clip's classifier builder.
CPU time is that of the training subprocesses (user + system), which on a shared machine is a
steadier figure than wall time; the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.presets import load_preset
from trainer.train import TrainRequest, train


def read_test_set(root: Path, preprocess: object) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    classnames = [c for c in (root / "classnames.txt").read_text().splitlines() if c.strip()]
    templates = [
        t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines() if t.strip()
    ]
    images, labels = [], []
    for shard in sorted((root / "test").glob("*.tar")):
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        for sample in samples.values():
            data = next(sample[k] for k in ("jpg", "png", "webp") if k in sample)
            images.append(preprocess(Image.open(io.BytesIO(data)).convert("RGB")))  # type: ignore[operator]
            labels.append(int(sample["cls"]))
    return classnames, templates, torch.stack(images), torch.tensor(labels)


def zero_shot(run_dir: Path, testset: Path) -> tuple[float, float]:
    from trainer.runs import load_run

    bundle = load_run(run_dir).load_clip(device="cpu")
    classnames, templates, x, y = read_test_set(testset, bundle.preprocess)
    fns = [lambda c, t=t: t.format(c=c) for t in templates]
    with torch.no_grad():
        clf = open_clip.build_zero_shot_classifier(
            bundle.model, bundle.tokenizer, classnames, fns, device="cpu"
        )
        acc = ((bundle.model.encode_image(x, normalize=True) @ clf).argmax(1) == y).float().mean().item()
    return acc, 1 / len(classnames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--testset", type=Path, required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--samples-seen", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        req = TrainRequest(
            shards=args.shards,
            out=Path(tmp) / "run",
            preset=load_preset(args.preset, overrides=args.overrides),
            mode="equal_samples",
            samples_seen=args.samples_seen,
            device="cpu",
        )
        t0 = time.perf_counter()
        run = train(req)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        acc, chance = zero_shot(run.run_dir, args.testset)  # type: ignore[arg-type]
        seen = run.info["samples_seen"]
    cpu = usage.ru_utime + usage.ru_stime
    print(f"preset {args.preset} {' '.join(args.overrides)}: {seen} samples seen")
    print(f"wall {wall:.1f} s ({seen / wall:.0f} samples/s)")
    print(f"training CPU {cpu:.1f} s ({seen / cpu:.0f} samples per CPU-second)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"zero-shot accuracy on {args.testset.name}: {acc:.3f} (chance {chance:.3f}, {acc / chance:.1f}x)")


if __name__ == "__main__":
    main()
