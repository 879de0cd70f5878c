"""A self-supervised copy-detection encoder, trained on the pool's own pictures.

SemDeDup and near dedup need an embedding in which another crop and colour grading of a picture
lands next to it and apart from other pictures. A large pretrained CLIP gives that on real data;
the project's tiny reference CLIP does not (docs/filters.md), and pixel descriptors move too much
under a crop. This is SSCD's recipe (Pizzi et al. 2022: a CNN trained contrastively so that two
augmented views of one image match and other images do not) at thumbnail scale: two random views
of each thumbnail (a resized crop of 65-100% of the area, contrast, tint, brightness; optionally
grey), a small CNN after per-image standardisation (so an affine colour grade hardly moves the
input), and open_clip's ``ClipLoss`` between the two views' embeddings. Views no harsher than the
copies to be found worked better here than SimCLR's harsher ones (crops down to 50%, 20% grey: at
eps 0.1 the same recall, 68.7%, at 3.8% instead of 6.9% false drops; docs/filters.md).

The trained module is saved as TorchScript, so the ``copydesc`` stage's ``kind: encoder`` runs any
TorchScript image encoder the same way: this one, or a published copy detector (docs/filters.md).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curation.core import storage
from curation.core.config import ConfigModel

META_FILE = "curation_meta.json"  # TorchScript extra file with the training settings and figures


class TrainEncoderConfig(ConfigModel):
    """Training settings; the defaults were chosen by measurement on the synthetic crawl (docs/filters.md)."""

    thumb: int = 32  # thumbnail side in pixels (``copydesc`` must embed at the same)
    width: int = 32  # channels of the first block (x2, x4, x4 in the next three)
    dim: int = 64  # embedding size
    steps: int = 2500
    batch: int = 256  # images per step (two views each)
    lr: float = 2e-3
    temperature: float = 0.1
    min_area: float = 0.65  # views: crops of at least this share of the picture (what a copy may cut)
    grey: float = 0.0  # views: share turned grey
    max_images: int = 200_000  # thumbnails held in memory: 200,000 x 32 x 32 x 3 bytes = 0.6 GB
    seed: int = 0
    device: str | None = None  # torch device for training; None: cuda when available, else cpu


class CopyEncoder(nn.Module):
    """``(n, 3, s, s)`` floats in [0, 1] -> ``(n, dim)`` unit vectors."""

    def __init__(self, width: int = 32, dim: int = 64) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            blocks += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
            blocks.append(nn.MaxPool2d(2))
        self.backbone = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Sequential(nn.Linear(chans[-1], chans[-1]), nn.ReLU(), nn.Linear(chans[-1], dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(dim=[2, 3], keepdim=True)) / (x.std(dim=[2, 3], keepdim=True) + 0.05)
        return F.normalize(self.proj(self.backbone(x)), dim=1)


def to_tensor(thumbs: np.ndarray) -> torch.Tensor:
    """``(n, s, s, 3)`` uint8 -> ``(n, 3, s, s)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(thumbs)).permute(0, 3, 1, 2).float().div_(255.0)


def augment(x: torch.Tensor, g: torch.Generator, min_area: float = 0.65, grey: float = 0.0) -> torch.Tensor:
    """A random view of each image of ``x`` (module docstring), drawn from ``g``: a crop of at least
    ``min_area`` of the picture, and grey with probability ``grey``."""
    n = len(x)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.empty(n, *shape).uniform_(lo, hi, generator=g)

    area, ratio = uniform(min_area, 1.0), torch.exp(uniform(-0.2, 0.2))
    sx, sy = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    gain = uniform(0.6, 1.5, 1, 1, 1) * uniform(0.85, 1.15, 3, 1, 1)
    out = (out - mean) * gain + mean + uniform(-0.2, 0.2, 1, 1, 1)
    grey_ = torch.rand(n, generator=g) < grey
    out[grey_] = out[grey_].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return out.clamp(0.0, 1.0)


@dataclass
class EncoderFit:
    model: CopyEncoder
    losses: list[float]  # mean loss of each tenth of the steps (fewer with under ten steps)
    view_top1: float  # held-out check: share of images whose own augmented view is their nearest
    seconds: float


def fit_encoder(
    thumbs: np.ndarray, cfg: TrainEncoderConfig, progress: Callable[[int], None] | None = None
) -> EncoderFit:
    """Train a :class:`CopyEncoder` on ``(n, s, s, 3)`` uint8 thumbnails (``progress(step)`` per step)."""
    from open_clip.loss import ClipLoss

    if len(thumbs) < 2:
        raise ValueError(f"a copy encoder needs at least 2 images to contrast, got {len(thumbs)}")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x = to_tensor(thumbs)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = CopyEncoder(cfg.width, cfg.dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    loss_fn, scale = ClipLoss(), torch.tensor(1.0 / cfg.temperature)
    batch = min(cfg.batch, len(x))
    start, step_losses = time.perf_counter(), []
    model.train()
    for step in range(cfg.steps):
        views = x[torch.randint(0, len(x), (batch,), generator=g)]  # augmented on the CPU: seeded there
        a, b = (augment(views, g, cfg.min_area, cfg.grey).to(device) for _ in range(2))
        loss = loss_fn(model(a), model(b), scale.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step_losses.append(loss.item())
        if progress is not None:
            progress(step)
    model = model.cpu().eval()
    losses = [round(float(part.mean()), 4) for part in np.array_split(step_losses, 10) if len(part)]
    top1 = view_top1(model, x, lambda v: augment(v, g, cfg.min_area, cfg.grey), g)
    return EncoderFit(model, losses, top1, time.perf_counter() - start)


@torch.no_grad()
def view_top1(
    model: nn.Module,
    x: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    g: torch.Generator,
    n: int = 1000,
) -> float:
    """Share of up to ``n`` images whose ``view`` finds the image itself first among the ``n``."""
    pick = x[torch.randperm(len(x), generator=g)[:n]]
    a, b = model(pick), model(view(pick))
    return float((b @ a.T).argmax(dim=1).eq(torch.arange(len(pick))).float().mean())


def save_encoder(model: nn.Module, path: str | Path, meta: dict, thumb: int = 32) -> None:
    """Write ``model`` as TorchScript (with ``meta`` as an extra file) to a local path or a URL.

    Traced, not scripted: ``torch.jit.script`` re-reads the class's source file, so it fails where
    only bytecode is installed and when the checkout changed during a 20-minute training run.
    The forward pass has no data-dependent branches, so the trace serves any batch and size."""
    example = torch.rand(2, 3, thumb, thumb, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():  # "deprecated" in recent torch, yet what copy detectors ship
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            scripted = torch.jit.trace(model.eval(), example)
    extra = {META_FILE: json.dumps(meta)}
    if not storage.is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        scripted.save(str(path), _extra_files=extra)
        return
    with tempfile.TemporaryDirectory(prefix="curation-encoder-") as tmp:
        local = Path(tmp) / storage.location(path).name
        scripted.save(str(local), _extra_files=extra)
        storage.upload(local, path)


_LOADED: dict[str, torch.jit.ScriptModule] = {}  # by content: at most two per process


def load_encoder(path: str) -> torch.jit.ScriptModule:
    """A TorchScript image encoder from a local path or a URL. The file is read on every call (a
    worker embeds many shards with it) but parsed once per content, so a file retrained under the
    same path is never served from a stale cache."""
    loc = storage.location(path)
    with storage.storage_errors(loc, "read"):
        if not loc.is_file():
            raise FileNotFoundError(f"encoder {storage.url(loc)} not found")
        data = storage.read_bytes(loc)
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _LOADED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        except RuntimeError as exc:
            raise ValueError(f"{storage.url(loc)} is not a TorchScript module: {exc}") from exc
        if len(_LOADED) >= 2:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[digest] = model
    return _LOADED[digest]


@torch.no_grad()
def embed(path: str, thumbs: np.ndarray, batch: int = 1024) -> np.ndarray:
    """``(n, d)`` float32 unit vectors of ``(n, s, s, 3)`` uint8 thumbnails under the encoder at ``path``."""
    model = load_encoder(path)
    out = [model(to_tensor(thumbs[i : i + batch])) for i in range(0, len(thumbs), batch)]
    vectors = torch.cat(out).float().numpy() if out else np.zeros((0, 0), np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"encoder {path} returned shape {tuple(vectors.shape)}, expected (n, d)")
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def encoder_dim(path: str, thumb: int) -> int:
    """The embedding size of the encoder at ``path`` on ``thumb`` x ``thumb`` input."""
    return embed(path, np.zeros((1, thumb, thumb, 3), np.uint8)).shape[1]
