"""Linear probe on frozen image features: how much class information the image tower holds.

Kept deliberately simple (CLIP_benchmark's probe does a learning-rate/weight-decay sweep in torch):
an L2-regularised multinomial logistic regression from scikit-learn on L2-normalised features.
Train on the test set's own ``train/`` split when it has one; otherwise on a seeded, stratified
split of the test split (``test_fraction`` held out), which the result record says.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from trainer.zeroshot import mean_per_class_recall


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test), every class on both sides; errors if a class has one sample."""
    counts = np.bincount(labels)
    if (counts[counts > 0] < 2).any():
        raise ValueError("a stratified probe split needs at least two samples per class; add a train/ split")
    rows = np.arange(len(labels))
    train, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float = 1.0,
    max_iter: int = 1000,
) -> tuple[dict[str, float], np.ndarray]:
    """Fit on train, score on test; returns metrics and per-sample correctness."""
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(train_x, train_y)
    proba = clf.predict_proba(test_x)
    order = np.argsort(-proba, axis=1)[:, :5]
    topk = clf.classes_[order]
    pred = topk[:, 0]
    correct = pred == test_y
    metrics = {
        "acc1": float(correct.mean()),
        "acc5": float((topk == test_y[:, None]).any(axis=1).mean()),
        "mean_per_class_recall": mean_per_class_recall(pred, test_y),
    }
    return metrics, correct
