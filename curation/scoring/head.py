"""Quality heads: a small linear or MLP model on stored image embeddings (aesthetics, NSFW, watermark).

A head maps an L2-normalised embedding to one score. It is stored as a torch state dict: either the
project's file (``{"state_dict", "config"}``, written by :func:`save_head` and ``curate train-head``)
or a bare state dict of ``nn.Linear`` layers, such as LAION's aesthetic predictor for ViT-L/14
embeddings, whose layer sizes are read off its weights (its layers have no activation between
them: pass ``activation: none``). The project ships no published weights; docs/scoring.md says how
to use them with the CLIP they were trained on.

Training (:func:`fit_head`) standardises the embeddings with the training set's mean and standard
deviation (kept in the state dict, so scoring applies the same), and fits with AdamW on binary
cross-entropy (labels 0/1, classes re-weighted) or mean squared error (other labels).
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from curation.core import storage

Activation = Literal["relu", "gelu", "none"]


class QualityHead(nn.Module):
    """``(x - mean) / std`` then Linear layers (with ``activation`` between them); one output."""

    def __init__(self, dim: int, hidden: list[int], activation: Activation = "relu") -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        layers: list[nn.Module] = []
        sizes = [dim, *hidden, 1]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 and activation != "none":
                layers.append(nn.ReLU() if activation == "relu" else nn.GELU())
        self.layers = nn.Sequential(*layers)
        self.config = {"dim": dim, "hidden": list(hidden), "activation": activation}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.mean) / self.std)[:, 0]

    @torch.no_grad()
    def score(self, vectors: np.ndarray, batch: int = 65536) -> np.ndarray:
        self.eval()
        out = [
            self(torch.from_numpy(np.ascontiguousarray(vectors[i : i + batch], np.float32)))
            for i in range(0, len(vectors), batch)
        ]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def save_head(head: QualityHead, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write a head to a local path or a URL (one object, the same bytes as the local file)."""
    obj = {"state_dict": head.state_dict(), "config": head.config, "meta": meta or {}}
    if not storage.is_remote(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
        return
    # torch names the archive inside the file after the file: save under the same name, then upload
    with tempfile.TemporaryDirectory(prefix="curation-head-") as tmp:
        local = Path(tmp) / storage.location(path).name
        torch.save(obj, local)
        storage.upload(local, path)


def load_head(path: str | Path, activation: Activation | None = None) -> QualityHead:
    """A head from the project's file or from a bare state dict of Linear layers (module docstring);
    ``path`` may be a URL."""
    loc = storage.location(path)
    name = storage.url(loc)
    with storage.storage_errors(loc, "read"):
        if not loc.is_file():
            raise FileNotFoundError(f"quality head {name} not found")
    with storage.local_copy(loc) as local:
        obj = torch.load(local, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and "config" in obj:
        cfg = obj["config"]
        head = QualityHead(cfg["dim"], cfg["hidden"], activation or cfg["activation"])
        head.load_state_dict(obj["state_dict"])
        return head
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: expected a state dict, got {type(obj).__name__}")
    weights = [(k, v) for k, v in obj.items() if k.endswith("weight") and v.ndim == 2]
    if not weights or weights[-1][1].shape[0] != 1:
        raise ValueError(f"{name}: no stack of Linear layers ending in one output ({list(obj)[:6]} ...)")
    dims = [weights[0][1].shape[1]] + [w.shape[0] for _, w in weights]
    head = QualityHead(dims[0], dims[1:-1], activation or "relu")
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    for (key, w), layer in zip(weights, linears, strict=True):
        layer.weight.data.copy_(w)
        bias = obj.get(key[: -len("weight")] + "bias")
        if bias is not None:
            layer.bias.data.copy_(bias)
    return head


@dataclass
class FitResult:
    head: QualityHead
    train_rows: np.ndarray
    holdout_rows: np.ndarray
    holdout_auc: float | None  # binary labels only


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN without both classes."""
    labels = np.asarray(labels).astype(bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fit_head(
    vectors: np.ndarray,
    labels: np.ndarray,
    holdout: np.ndarray,
    hidden: list[int],
    epochs: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> FitResult:
    """Fit a head on the rows where ``holdout`` is False (full batch) and measure AUC on the others."""
    torch.manual_seed(seed)
    train = ~holdout
    x, y = vectors[train].astype(np.float32), labels[train].astype(np.float32)
    if len(x) == 0:
        raise ValueError("no training examples (every labelled row is held out)")
    binary = set(np.unique(y).tolist()) <= {0.0, 1.0}
    head = QualityHead(vectors.shape[1], hidden)
    head.mean.copy_(torch.from_numpy(x.mean(axis=0)))
    head.std.copy_(torch.from_numpy(x.std(axis=0) + 1e-6))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    pos_weight = torch.tensor((1 - y.mean()) / max(y.mean(), 1e-6)) if binary else None
    head.train()
    for _ in range(epochs):
        opt.zero_grad()
        out = head(xt)
        if binary:
            loss = nn.functional.binary_cross_entropy_with_logits(out, yt, pos_weight=pos_weight)
        else:
            loss = nn.functional.mse_loss(out, yt)
        loss.backward()
        opt.step()
    auc = roc_auc(labels[holdout], head.score(vectors[holdout])) if binary and holdout.any() else None
    return FitResult(head, np.flatnonzero(train), np.flatnonzero(holdout), auc)


def holdout_mask(uids: list[str], fraction: float, seed: int) -> np.ndarray:
    """A seeded split by uid hash: the same rows are held out whatever the order or engine."""
    cut = int(fraction * 2**32)
    return np.array(
        [
            int.from_bytes(hashlib.md5(f"{seed}:{u.lower()}".encode()).digest()[:4], "little") < cut
            for u in uids
        ],
        dtype=bool,
    )
