"""A training run's plan: the request, the budget it fixes and the device, checked before a launch.

Both trainers (CLIP through open_clip_train in :mod:`trainer.train`, the supervised baseline in
:mod:`trainer.supervised`) start from the same plan, so it lives below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from upath import UPath

from curation.core import storage
from curation.core.config import build
from curation.core.io import read_json
from trainer.budget import Budget, plan_budget
from trainer.presets import Preset
from trainer.shards import ShardSet, open_shards

PLAN_FILE = "plan.json"


class TrainError(RuntimeError):
    """Training could not start or did not finish; the message says why and where the log is."""


@dataclass(frozen=True)
class TrainRequest:
    shards: Path | UPath  # a local folder or a URL (s3://...)
    out: Path | UPath  # the run folder: a local folder or a URL
    preset: Preset
    mode: str = "one_epoch"
    samples_seen: int | None = None
    seed: int = 0
    device: str = "auto"
    gpus: int = 1
    supervised: bool = False
    classnames: Path | UPath | None = None
    overwrite: bool = False


@dataclass
class RunPlan:
    """Everything that determines the trained weights (plus the device), fixed when a run starts."""

    request: TrainRequest
    shards: ShardSet
    budget: Budget
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "supervised" if self.request.supervised else "clip"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "preset": self.request.preset.model_dump(mode="json"),
            "data": str(self.shards.directory),
            "data_samples": self.shards.num_samples,
            "budget": self.budget.to_dict(),
            "seed": self.request.seed,
            "gpus": self.request.gpus,
            "device": self.device,
            **self.extra,
        }


def resolve_train_device(device: str, gpus: int = 1) -> str:
    """``auto`` is CUDA when present (or when several GPUs are asked for); else as given."""
    if device == "auto":
        return "cuda" if gpus > 1 or torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return device


def check_launchable(plan: RunPlan) -> None:
    """Before starting training here: CUDA must exist when asked for; never a silent CPU run."""
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device {plan.device}: CUDA is not available here (use --device cpu or auto)")
    if plan.request.gpus > 1 and not plan.device.startswith("cuda"):
        raise TrainError(f"--gpus {plan.request.gpus} needs CUDA (open_clip_train's DDP wraps CUDA devices)")


def make_plan(req: TrainRequest) -> RunPlan:
    """Check the request and fix the budget. Devices are checked only when training is launched here
    (``check_launchable``): ``--print-command`` plans for other machines, and a run trained by a
    cluster launch can be exported on a machine without GPUs."""
    shards = open_shards(req.shards)
    budget = plan_budget(req.mode, shards.num_samples, req.preset, req.samples_seen)
    if req.gpus < 1:
        raise TrainError(f"--gpus must be at least 1, got {req.gpus}")
    if req.preset.batch_size % req.gpus:
        raise TrainError(f"batch size {req.preset.batch_size} does not split evenly over {req.gpus} GPUs")
    if req.supervised and req.gpus > 1:
        raise TrainError("the supervised baseline trains on one device; run it without --gpus")
    readers = max(1, req.preset.workers) * req.gpus
    if not budget.resampled and len(shards.tars) < readers:
        raise TrainError(
            f"one_epoch reads each shard once: {len(shards.tars)} shard(s) cannot feed {readers} loader "
            "workers; lower workers (--set workers=N) or reshard into more shards"
        )
    return RunPlan(req, shards, budget, resolve_train_device(req.device, req.gpus))


def plan_from_file(run_dir: Path, device: str) -> RunPlan:
    """The plan a run started with (``RUN/plan.json``), for the training process to rebuild."""
    d = read_json(run_dir / PLAN_FILE)
    req = TrainRequest(
        shards=storage.location(d["data"]),
        out=run_dir,
        preset=build(Preset, d["preset"], source=str(run_dir / PLAN_FILE)),
        mode=d["budget"]["mode"],
        samples_seen=d["budget"]["samples_seen"],
        seed=d["seed"],
        device=device,
        gpus=d["gpus"],
        supervised=d["kind"] == "supervised",
    )
    plan = make_plan(req)
    plan.extra.update({k: v for k, v in d.items() if k not in plan.to_dict()})
    return plan
