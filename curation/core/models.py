"""Model construction through open_clip's factory, with the project's tiny CPU configs registered.

Tiny architectures live as open_clip JSON configs in ``conf/models/``; registering that folder
makes them available by name everywhere (``create_model_and_transforms("tiny-vit", ...)``), so
a real pretrained model (``ViT-B-32`` with a LAION or OpenAI tag) and a local checkpoint path
go through exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

MODEL_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "models"
_registered = False


def register_project_models() -> None:
    """Add ``conf/models/*.json`` to open_clip's model registry (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONF_DIR)
        _registered = True


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class ClipBundle:
    """A CLIP model with its eval preprocessing and tokenizer, ready for inference."""

    name: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device


def load_clip(
    name: str, pretrained: str | None = None, device: str = "auto", precision: str = "fp32"
) -> ClipBundle:
    """Build an open_clip model by name; ``pretrained`` is an open_clip tag or a checkpoint path.

    Checkpoints are loaded by open_clip with ``weights_only`` semantics for plain state dicts.
    """
    register_project_models()
    if pretrained and Path(pretrained).exists():
        pretrained = str(Path(pretrained).resolve())
    dev = resolve_device(device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained or None, device=dev, precision=precision
    )
    model.eval()
    return ClipBundle(name, model, preprocess, open_clip.get_tokenizer(name), dev)
