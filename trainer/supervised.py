"""The language-free baseline: the same image tower with a linear head, trained with cross-entropy.

The robustness talk's control asks whether CLIP's robustness comes from language supervision or
from the data: train the CLIP image tower (open_clip's ``model.visual``) on the same curated
images, with their class labels (``KEY.cls``) instead of captions, on the same budget. This loop is
small and ours because open_clip_train only trains image-text models; it reuses open_clip_train's
schedule, autocast and shard readers, and the project's seeding, so a seed fixes the run and a
resumed run (from the last finished chunk) matches an uninterrupted one.

Samples are never dropped silently: one without an image, with an unreadable image, without a
label or with a label outside the class list is counted under that reason in ``run.json`` and
left out of the loss.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip
import torch
import torch.nn.functional as F
import webdataset as wds
from open_clip_train import data as ocd
from open_clip_train.precision import get_autocast
from open_clip_train.scheduler import cosine_lr
from PIL import Image
from torch import nn
from upath import UPath

from curation.core import storage
from curation.core.io import atomic_path, atomic_write_json, read_json
from curation.core.models import register_project_models
from trainer.oclog import StepLine, format_step
from trainer.runs import CHECKPOINT_FILE, RunError, load_checkpoint, load_run, save_checkpoint
from trainer.seeding import EpochSeededShuffle, WorkerSeed

if TYPE_CHECKING:
    from trainer.plan import RunPlan

log = logging.getLogger(__name__)

STATE_DIR = "supervised"
CLASSNAMES_FILE = "classnames.txt"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# Label codes for samples that cannot be trained on; the loop counts them by reason.
DROP_REASONS = {-1: "no_label", -2: "bad_label", -3: "no_image", -4: "bad_image"}
SHUFFLE_BUFSIZE, SHUFFLE_INITIAL = 5000, 1000  # as open_clip_train's sample shuffle


class LinearHeadClassifier(nn.Module):
    """Image tower + linear head; ``forward(images)`` returns class logits."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(images))


def build_classifier(
    model_name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None, aug_scale: Any = (0.9, 1.0)
) -> tuple[LinearHeadClassifier, Any, Any]:
    """The classifier (fresh weights) with open_clip's train and eval transforms for the model."""
    register_project_models()
    clip, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        model_name, aug_cfg={"scale": tuple(aug_scale)}, **(model_kwargs or {})
    )
    embed_dim = open_clip.get_model_config(model_name)["embed_dim"]
    return LinearHeadClassifier(clip.visual, embed_dim, num_classes), preprocess_train, preprocess_val


def read_classnames(path: Path | UPath) -> list[str]:
    names = [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]
    if not names:
        raise RunError(f"{path}: no class names")
    return names


def find_classnames(shards_dir: Path | UPath, explicit: Path | UPath | None) -> Path | UPath:
    """``--classnames``, else ``classnames.txt`` in the shards' folder or the one above it (paths or URLs)."""
    if explicit is not None:
        explicit = storage.location(explicit)
        if not explicit.exists():
            raise RunError(f"--classnames {explicit}: no such file")
        return explicit
    for candidate in (shards_dir / CLASSNAMES_FILE, shards_dir.parent / CLASSNAMES_FILE):
        if candidate.exists():
            return candidate
    raise RunError(
        f"supervised training needs class names (one per line, index = label): none in {shards_dir} "
        "or its parent; pass --classnames FILE"
    )


def prepare_supervised(plan: RunPlan) -> None:
    """Resolve the class list into the plan (so a resume with other classes is refused)."""
    path = find_classnames(plan.shards.directory, plan.request.classnames)
    names = read_classnames(path)
    log.info("classes: %d from %s", len(names), path)
    where = storage.url(path) if storage.is_remote(path) else str(Path(path).resolve())
    plan.extra.update({"classnames": names, "classnames_file": where})


class ToExample:
    """Sample dict -> (image tensor, label); unusable samples get a negative label code."""

    def __init__(self, preprocess: Any, num_classes: int, image_size: tuple[int, int]) -> None:
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.blank = torch.zeros(3, *image_size)

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        label = self._label(sample.get("cls"))
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if data is None:
            return self.blank, -3
        try:
            with Image.open(io.BytesIO(data)) as img:
                image = self.preprocess(img.convert("RGB"))
        except Exception:  # any decode error is a recorded drop reason, not a crash
            return self.blank, -4
        return image, label

    def _label(self, raw: bytes | None) -> int:
        if raw is None:
            return -1
        try:
            label = int(raw.decode().strip())
        except (UnicodeDecodeError, ValueError):
            return -2
        return label if 0 <= label < self.num_classes else -2


def labelled_loader(
    plan: RunPlan, chunk: int, to_example: ToExample, batch_size: int, workers: int
) -> wds.WebLoader:
    """Batches for one chunk: shards drawn or shuffled, and samples shuffled, by (seed, chunk)."""
    seed, urls = plan.request.seed, plan.shards.urls  # pipe: URLs for shards on object storage
    epoch = ocd.SharedEpoch(chunk)
    if plan.budget.resampled:
        source = [ocd.ResampledShards2(urls, worker_seed=WorkerSeed(seed), deterministic=True, epoch=epoch)]
    else:
        source = [
            wds.SimpleShardList(urls),
            ocd.detshuffle2(bufsize=len(urls), initial=len(urls), seed=seed, epoch=epoch),
            wds.split_by_worker,
        ]
    pipeline = wds.DataPipeline(
        *source,
        ocd.tarfile_to_samples_nothrow,
        EpochSeededShuffle(SHUFFLE_BUFSIZE, SHUFFLE_INITIAL, seed, epoch),
        wds.map(to_example),
        wds.batched(batch_size, partial=False),
    )
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers)


def param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases and norms (open_clip_train's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def _image_size(preprocess: Any) -> tuple[int, int]:
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if size is not None:
            return (size, size) if isinstance(size, int) else tuple(size)[:2]  # type: ignore[return-value]
    raise RunError("cannot tell the model's input size from its transforms")


def train_supervised(plan: RunPlan) -> dict[str, Any]:
    """Train the classifier to the end of the budget (resuming a saved chunk); run.json fields.

    Runs in the training process (``python -m trainer.supervised RUN``); logs step lines in
    open_clip_train's format, which the parent turns into the progress bar.
    """
    req, p, budget = plan.request, plan.request.preset, plan.budget
    classnames: list[str] = plan.extra["classnames"]
    device = torch.device(plan.device)
    torch.manual_seed(req.seed)
    model, preprocess_train, _ = build_classifier(
        p.model, len(classnames), p.model_kwargs(), p.image.aug_scale
    )
    model.to(device)
    lr = p.supervised.lr or p.lr
    optimizer = torch.optim.AdamW(param_groups(model, p.wd), lr=lr, betas=(p.beta1, p.beta2), eps=p.eps)
    steps_per_chunk = budget.samples_per_chunk // p.batch_size
    scheduler = cosine_lr(optimizer, lr, p.warmup, steps_per_chunk * budget.chunks)
    autocast = get_autocast(p.precision, device_type=device.type)
    input_dtype = open_clip.get_input_dtype(p.precision)
    scaler = torch.amp.GradScaler("cuda") if p.precision == "amp" and device.type == "cuda" else None
    to_example = ToExample(preprocess_train, len(classnames), _image_size(preprocess_train))

    state_path = req.out / STATE_DIR / "state.pt"
    state = _load_state(state_path, model, optimizer, scaler)
    counts: Counter[str] = Counter(state.get("counts", {}))
    last_loss = state.get("last_loss")
    for chunk in range(state.get("chunk", 0), budget.chunks):
        model.train()
        losses: list[float] = []
        tick, done_at_tick = time.perf_counter(), 0
        loader = labelled_loader(plan, chunk, to_example, p.batch_size, p.workers)
        for i, (images, labels) in enumerate(loader):
            if i >= steps_per_chunk:
                break
            scheduler(chunk * steps_per_chunk + i)
            loss = _step(
                model, optimizer, scaler, autocast, images.to(device, input_dtype), labels, device, p
            )
            _count(counts, labels)
            if loss is not None:
                last_loss = loss
                losses.append(loss)
            if i % p.log_every_n_steps == 0 or i + 1 == steps_per_chunk:
                done = (i + 1) * p.batch_size
                now = time.perf_counter()
                rate = (done - done_at_tick) / max(now - tick, 1e-9)
                tick, done_at_tick = now, done
                nan = float("nan")
                line = StepLine(
                    chunk, done, steps_per_chunk * p.batch_size, rate, optimizer.param_groups[0]["lr"],
                    last_loss if last_loss is not None else nan, sum(losses) / len(losses) if losses else nan,
                )  # fmt: skip
                log.info(format_step(line))
        _save_state(state_path, model, optimizer, scaler, chunk + 1, counts, last_loss)
    return _finish(plan, model, classnames, counts, last_loss)


def _step(
    model: nn.Module, optimizer: Any, scaler: Any, autocast: Any, images: torch.Tensor,
    labels: torch.Tensor, device: torch.device, p: Any,
) -> float | None:  # fmt: skip
    valid = labels >= 0
    if not bool(valid.any()):
        return None
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits = model(images[valid.to(images.device)])
        loss = F.cross_entropy(logits, labels[valid].to(device), label_smoothing=p.supervised.label_smoothing)
    if scaler is not None:
        scaler.scale(loss).backward()
        if p.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if p.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip_norm)
        optimizer.step()
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"supervised loss is {value}; lower the learning rate (--set supervised.lr=...)")
    return value


def _count(counts: Counter[str], labels: torch.Tensor) -> None:
    counts["seen"] += len(labels)
    counts["trained"] += int((labels >= 0).sum())
    for code, reason in DROP_REASONS.items():
        n = int((labels == code).sum())
        if n:
            counts[f"dropped_{reason}"] += n


def _load_state(path: Path, model: nn.Module, optimizer: Any, scaler: Any) -> dict[str, Any]:
    if not path.exists():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    log.info("resuming after chunk %d of the supervised run (%s)", state["chunk"], path)
    return state


def _save_state(
    path: Path,
    model: nn.Module,
    optimizer: Any,
    scaler: Any,
    chunk: int,
    counts: Counter[str],
    last_loss: Any,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "chunk": chunk,
        "counts": dict(counts),
        "last_loss": last_loss,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _finish(
    plan: RunPlan, model: nn.Module, classnames: list[str], counts: Counter[str], last_loss: float | None
) -> dict[str, Any]:
    p = plan.request.preset
    save_checkpoint(
        plan.request.out / CHECKPOINT_FILE,
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        kind="supervised",
        model=p.model,
        classnames=list(classnames),
        model_kwargs=p.model_kwargs(),
    )
    dropped = {k.removeprefix("dropped_"): v for k, v in sorted(counts.items()) if k.startswith("dropped_")}
    if dropped:
        log.warning("supervised: samples left out of the loss: %s", dropped)
    return {
        "checkpoint": CHECKPOINT_FILE,
        "train_state": f"{STATE_DIR}/state.pt",
        "epochs": plan.budget.chunks,
        "samples_seen": counts["seen"],
        "samples_trained": counts["trained"],
        "dropped": dropped,
        "final_loss": last_loss,
        "model_kwargs": p.model_kwargs(),
        "num_classes": len(classnames),
    }


RESULT_FILE = "result.json"


def run_supervised(plan: RunPlan) -> dict[str, Any]:
    """Parent side: run the loop in a training process on RUN/plan.json; its run.json fields."""
    from trainer.launch import run_training_subprocess
    from trainer.plan import check_launchable

    check_launchable(plan)
    state_dir = plan.request.out / STATE_DIR
    (state_dir / RESULT_FILE).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer.supervised", str(plan.request.out), "--device", plan.device]
    run_training_subprocess(cmd, state_dir, plan.budget, "supervised")
    return read_json(state_dir / RESULT_FILE)


def main(argv: list[str]) -> None:
    """Training process: ``python -m trainer.supervised RUN --device DEV``."""
    from trainer.plan import plan_from_file
    from trainer.shards import install_fsspec_opener

    run_dir, device = Path(argv[0]), argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    (run_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s | %(levelname)s | %(message)s",
        datefmt="%Y-%m-%d,%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / STATE_DIR / "out.log")],
    )
    install_fsspec_opener()  # shards on object storage: read in-process (trainer.shards)
    fields = train_supervised(plan_from_file(run_dir, device))
    atomic_write_json(run_dir / STATE_DIR / RESULT_FILE, fields)


def load_supervised(path_or_run: str | Path | UPath) -> tuple[nn.Module, Any, list[str]]:
    """(classifier returning logits, eval preprocess, class names) from a RUN dir or its checkpoint."""
    run = load_run(path_or_run)
    if run.kind != "supervised":
        raise RunError(f"{path_or_run}: a {run.kind} run, not a supervised one")
    ckpt = load_checkpoint(run.checkpoint)
    classnames = list(ckpt["classnames"])
    model, _, preprocess = build_classifier(ckpt["model"], len(classnames), ckpt.get("model_kwargs"))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), preprocess, classnames


if __name__ == "__main__":
    main(sys.argv[1:])
