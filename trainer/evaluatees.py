"""The models the evaluator can score, behind one small interface.

A model comes from open_clip's factory (``--model NAME --pretrained TAG_OR_PATH``) or from a
project run directory (``RUN/run.json``: ``kind``, ``model``, ``checkpoint``). CLIP models classify
with template-ensemble text classifiers; supervised runs classify with their own head, whose
classes are matched to the test set's by name. Run directories and checkpoints may be URLs
(``s3://...``): a checkpoint there is copied to a local temp file while the model is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from upath import UPath

from curation.core import storage
from curation.core.models import load_clip, resolve_device
from trainer.errors import EvalInputError
from trainer.eval_config import EvalConfig
from trainer.suites import TestSet
from trainer.zeroshot import classifier_weights

RUN_FILE = "run.json"


class ModelSourceError(EvalInputError):
    """A model reference (run dir, checkpoint, name) that cannot be resolved."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, and the name results and plots use for them."""

    kind: str  # "clip" or "supervised"
    model: str
    pretrained: str | None
    label: str
    run_dir: Path | UPath | None = None


def is_url(text: str | None) -> bool:
    """A weights reference that is a URL on object storage (not a path, not an open_clip tag)."""
    return bool(text) and "://" in str(text) and storage.is_remote(str(text))


def read_run(run_dir: Path | UPath) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    try:
        info = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{path}: not valid JSON: {exc}") from exc
    missing = [k for k in ("model", "checkpoint") if not info.get(k)]
    if missing:
        raise ModelSourceError(f"{path}: missing {', '.join(missing)}")
    return info


def resolve_source(
    source: str | None, model: str | None, pretrained: str | None, label: str | None = None
) -> ModelSource:
    """A RUN dir, a checkpoint file (needs ``--model``), or ``--model`` with a ``--pretrained`` tag.

    The RUN dir and the checkpoint (``source`` or ``pretrained``) may be URLs."""
    loc = storage.location(source) if source else None
    if loc is not None and (loc / RUN_FILE).exists():
        run_dir = loc
        info = read_run(run_dir)
        kind = info.get("kind", "clip")
        if kind not in ("clip", "supervised"):
            raise ModelSourceError(f"{run_dir / RUN_FILE}: unknown kind {kind!r} (clip or supervised)")
        checkpoint = str(run_dir / info["checkpoint"])
        name = run_dir.name if storage.is_remote(run_dir) else Path(run_dir).resolve().name
        return ModelSource(kind, model or info["model"], checkpoint, label or name, run_dir)
    if loc is not None and loc.is_dir():
        raise ModelSourceError(f"{source}: a directory without {RUN_FILE} is not a run")
    if source and pretrained:
        raise ModelSourceError(
            "give a checkpoint either as the positional argument or as --pretrained, not both"
        )
    weights = source or pretrained
    if not model:
        raise ModelSourceError("--model NAME is required unless a run directory is given")
    if loc is not None and not loc.is_file():
        raise ModelSourceError(f"{source}: no such checkpoint file or run directory")
    default_label = model if not weights else f"{model}/{_weights_name(weights)}"
    return ModelSource("clip", model, weights, label or default_label)


def _weights_name(weights: str) -> str:
    """A checkpoint file's (or URL's) stem, else the open_clip tag as given."""
    if is_url(weights):
        return storage.location(weights).stem
    return Path(weights).stem if Path(weights).exists() else weights


class Evaluatee(Protocol):
    """A model as the evaluator sees it."""

    source: ModelSource
    preprocess: Callable[..., torch.Tensor]
    has_text: bool

    def image_forward(self, images: torch.Tensor) -> torch.Tensor: ...

    def class_logits(self, outputs: torch.Tensor, test_set: TestSet) -> torch.Tensor: ...

    def text_features(self, texts: Sequence[str], batch_size: int) -> torch.Tensor: ...


class ClipEvaluatee:
    """open_clip model: normalised image features, template-ensemble text classifiers."""

    has_text = True

    def __init__(self, source: ModelSource, device: str, precision: str) -> None:
        self.source = source
        if is_url(source.pretrained):
            assert source.pretrained is not None
            with storage.local_copy(source.pretrained) as local:
                self.bundle = load_clip(source.model, str(local), device=device, precision=precision)
        else:
            self.bundle = load_clip(source.model, source.pretrained, device=device, precision=precision)
        self.preprocess = self.bundle.preprocess
        self.device = self.bundle.device
        self.dtype = next(self.bundle.model.parameters()).dtype
        self.autocast = precision.startswith("amp") and self.device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
        self._weights: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast)

    def image_forward(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.bundle.model.encode_image(images.to(self.device, self.dtype), normalize=True)

    def class_logits(self, outputs: torch.Tensor, test_set: TestSet) -> torch.Tensor:
        key = (test_set.classnames, test_set.templates)  # ImageNet and its shifts share one classifier
        if key not in self._weights:
            with self._autocast():
                weights = classifier_weights(
                    self.bundle.model,
                    self.bundle.tokenizer,
                    test_set.classnames,
                    test_set.templates,
                    self.device,
                )
            self._weights[key] = weights.cpu()
        return 100.0 * outputs @ self._weights[key]

    def text_features(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        chunks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), batch_size):
                tokens = self.bundle.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                chunks.append(self.bundle.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(chunks)


def normalize_classname(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


class SupervisedEvaluatee:
    """A supervised classifier (trainer.supervised): its head's logits, columns matched by class name."""

    has_text = False

    def __init__(self, source: ModelSource, device: str) -> None:
        try:  # the trainer's module; only needed for supervised runs
            from trainer.supervised import load_supervised
        except ModuleNotFoundError as exc:
            if exc.name != "trainer.supervised":
                raise
            raise ModelSourceError(f"{source.run_dir}: supervised runs need trainer/supervised.py") from exc

        assert source.run_dir is not None
        self.source = source
        self.device = resolve_device(device)
        module, self.preprocess, classnames = load_supervised(source.run_dir)
        self.module = module.to(self.device).eval()
        self.head = {normalize_classname(c): i for i, c in enumerate(classnames)}

    def image_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(self.device))

    def class_logits(self, outputs: torch.Tensor, test_set: TestSet) -> torch.Tensor:
        names = [normalize_classname(c) for c in test_set.classnames]
        missing = [c for c in names if c not in self.head]
        if missing:
            raise ValueError(
                f"{test_set.name}: {len(missing)} test classes are not in the supervised head, "
                f"e.g. {missing[:5]}"
            )
        return outputs[:, torch.as_tensor([self.head[c] for c in names])]

    def text_features(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        raise TypeError("a supervised classifier has no text tower")


def load_evaluatee(source: ModelSource, cfg: EvalConfig) -> Evaluatee:
    if source.kind == "supervised":
        return SupervisedEvaluatee(source, cfg.device)
    return ClipEvaluatee(source, cfg.device, cfg.precision)
