"""Run directories: what a training run leaves behind and how other stages find its model.

``RUN/run.json`` says what was trained on what (kind, model, preset, data, subset manifest, budget,
samples seen, seed, code version, wall time, final loss) and where the weights are
(``checkpoint``, relative to RUN). ``RUN/checkpoint.pt`` is ``{"state_dict": ..., ...}`` that
``open_clip.create_model_and_transforms(model, pretrained=PATH)`` loads, or for a supervised run,
what :func:`trainer.supervised.load_supervised` rebuilds.

A run folder may be a URL (``s3://bucket/runs/r1``): ``run.json`` is read from there and the
checkpoint copied to a local temp file only while a model is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from upath import UPath

from curation.core import storage
from curation.core.io import atomic_path, read_json

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
KINDS = ("clip", "supervised")


class RunError(ValueError):
    """A path that is not a finished run or a checkpoint the project can rebuild."""


@dataclass(frozen=True)
class RunInfo:
    """A finished run, as the evaluator and the scoring stage need it."""

    run_dir: Path | UPath | None  # local paths or URLs
    kind: str
    model: str
    checkpoint: Path | UPath
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def preset(self) -> str | None:
        return self.info.get("preset")

    @property
    def samples_seen(self) -> int | None:
        return self.info.get("samples_seen")

    def load_clip(self, device: str = "auto", precision: str = "fp32") -> Any:
        """The CLIP model of this run (a :class:`curation.core.models.ClipBundle`)."""
        from curation.core.models import load_clip

        if self.kind != "clip":
            raise RunError(f"{self.run_dir or self.checkpoint}: a {self.kind} run has no CLIP model")
        if self.model_kwargs:
            raise RunError(
                f"{self.run_dir}: trained with {self.model_kwargs}; build it with "
                "open_clip.create_model_and_transforms(model, pretrained=checkpoint, **model_kwargs)"
            )
        with storage.local_copy(self.checkpoint) as local:
            return load_clip(self.model, str(local), device=device, precision=precision)


def load_run(path: str | Path | UPath) -> RunInfo:
    """A RUN directory (with ``run.json``) or a checkpoint file written by the trainer (paths or URLs)."""
    path = storage.location(path)
    if path.is_dir():
        run_file = path / RUN_FILE
        if not run_file.exists():
            raise RunError(
                f"{path}: no {RUN_FILE}; not a finished run (an interrupted run resumes with curate train)"
            )
        info = read_json(run_file)
        missing = [k for k in ("kind", "model", "checkpoint") if not info.get(k)]
        if missing:
            raise RunError(f"{run_file}: missing {', '.join(missing)}")
        if info["kind"] not in KINDS:
            raise RunError(f"{run_file}: unknown kind {info['kind']!r}")
        checkpoint = path / info["checkpoint"]
        if not checkpoint.exists():
            raise RunError(f"{run_file}: checkpoint {checkpoint} is missing")
        return RunInfo(path, info["kind"], info["model"], checkpoint, info.get("model_kwargs") or {}, info)
    if path.is_file():
        if (path.parent / RUN_FILE).exists() and read_json(path.parent / RUN_FILE).get(
            "checkpoint"
        ) == path.name:
            return load_run(path.parent)
        meta = checkpoint_metadata(path)
        if "model" not in meta:
            raise RunError(f"{path}: no {RUN_FILE} beside it and no model name inside; pass the model name")
        return RunInfo(
            None, meta.get("kind", "clip"), meta["model"], path, meta.get("model_kwargs") or {}, meta
        )
    raise RunError(f"{path}: no such run directory or checkpoint")


def checkpoint_metadata(path: str | Path | UPath) -> dict[str, Any]:
    """Everything in a trainer checkpoint except the weights."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        return {}
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


def load_checkpoint(path: str | Path | UPath) -> Any:
    """``torch.load`` of a checkpoint file or URL (copied to a local temp file first), on the CPU."""
    with storage.local_copy(path) as local:
        return torch.load(local, map_location="cpu", weights_only=True)


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], **meta: Any) -> None:
    """Weights plus plain metadata, loadable with ``weights_only=True`` (what open_clip uses)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, **meta}, tmp)


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP checkpoints name parameters ``module.x``; the bare model names them ``x``."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict
