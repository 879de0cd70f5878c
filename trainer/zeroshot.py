"""Zero-shot classification: template-ensemble text classifiers and the metrics CLIP_benchmark reports.

The classifier is open_clip's own ``build_zero_shot_classifier`` (per class: encode every template,
L2-normalise, average, re-normalise), so numbers are comparable with open_clip and CLIP_benchmark.
Metrics: top-1, top-5 and mean per-class recall (balanced accuracy over the classes present).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from open_clip import build_zero_shot_classifier

TOPK = 5


def classifier_weights(
    model: Any, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """(embed_dim, n_classes) normalised class embeddings from a template ensemble.

    Templates use CLIP_benchmark's named ``{c}`` placeholder, so they are passed as callables.
    """
    fillers = [partial(_fill, template) for template in templates]
    with torch.inference_mode():
        weights = build_zero_shot_classifier(
            model, tokenizer, list(classnames), fillers, num_classes_per_batch=10, device=device
        )
    return weights.float()


def _fill(template: str, classname: str) -> str:
    return template.format(c=classname)


def restrict_to_subset(logits: torch.Tensor, class_subset: Sequence[int] | None) -> torch.Tensor:
    """Mask classes outside ``class_subset`` to -inf, as CLIP_benchmark does for ImageNet-A/-R.

    Labels keep their original indices, so a 1000-way classifier evaluated on a 200-class test set
    can only predict the 200 classes that exist in it.
    """
    if class_subset is None:
        return logits
    mask = torch.ones(logits.shape[1], dtype=torch.bool)
    mask[torch.as_tensor(list(class_subset), dtype=torch.long)] = False
    return logits.masked_fill(mask.to(logits.device), float("-inf"))


@dataclass
class ClassificationResult:
    metrics: dict[str, float]
    topk: np.ndarray  # (n, k) predicted class indices, best first
    correct: np.ndarray  # (n,) bool: top-1 hit, per sample (for bootstrap CIs)


def mean_per_class_recall(pred: np.ndarray, labels: np.ndarray) -> float:
    """Average over the classes present in ``labels`` of the fraction of that class predicted right."""
    classes, inverse = np.unique(labels, return_inverse=True)
    hits = np.bincount(inverse, weights=(pred == labels).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / np.bincount(inverse, minlength=len(classes))))


def classify(
    logits: torch.Tensor, labels: np.ndarray, class_subset: Sequence[int] | None = None
) -> ClassificationResult:
    """Top-1/top-5/mean per-class recall of ``logits`` (n, n_classes) against integer ``labels``."""
    n_classes = logits.shape[1]
    if len(labels) == 0:
        raise ValueError("no samples to classify")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}); got range [{labels.min()}, {labels.max()}]")
    if class_subset is not None:
        outside = np.setdiff1d(np.unique(labels), np.asarray(class_subset))
        if outside.size:
            raise ValueError(f"labels {outside[:5].tolist()} are outside the class subset")
    allowed = n_classes if class_subset is None else len(class_subset)
    k = min(TOPK, allowed)
    topk = restrict_to_subset(logits, class_subset).topk(k, dim=1).indices.cpu().numpy()
    correct = topk[:, 0] == labels
    metrics = {
        "acc1": float(correct.mean()),
        "acc5": float((topk == labels[:, None]).any(axis=1).mean()),
        "mean_per_class_recall": mean_per_class_recall(topk[:, 0], labels),
    }
    return ClassificationResult(metrics, topk, correct)
