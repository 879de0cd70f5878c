"""The reference CLIP of the score stage: loaded by name through open_clip, pinned to one device.

A model name and tag (``ViT-B-32`` / ``laion2b_s34b_b79k``), a checkpoint path or URL (``s3://...``:
each worker loads it from a local copy), or a project tiny config all go through
``curation.core.models.load_clip``. What can go wrong before any shard runs (an unknown name, a tag
that is neither known nor a file, weights that cannot be fetched) is a :class:`ModelLoadError` that
says what to do instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from curation.core import storage
from curation.core.models import ClipBundle, load_clip, register_project_models

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A reference model that cannot be built as asked; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelSpec:
    """Name and weights of a reference model, and a fingerprint that tells two checkpoints apart."""

    model: str
    pretrained: str | None

    def identity(self) -> dict[str, Any]:
        """What a score column was computed with; a checkpoint file is named by its content hash."""
        out: dict[str, Any] = {"model": self.model, "pretrained": self.pretrained}
        path = self.checkpoint_path()
        if path is not None:
            out["pretrained"] = str(path)
            out["sha256"] = file_sha256(path)
        return out

    def checkpoint_path(self) -> Path | None:
        """The checkpoint file ``pretrained`` names (a resolved local path, or a URL), None for a tag."""
        if self.pretrained is None:
            return None
        if self.remote_checkpoint():
            loc = storage.location(self.pretrained)
            with storage.storage_errors(loc, "read"):
                return loc if loc.is_file() else None
        path = Path(self.pretrained).expanduser()
        return path.resolve() if path.is_file() else None

    def remote_checkpoint(self) -> bool:
        """``pretrained`` is a URL (open_clip tags never are)."""
        return self.pretrained is not None and storage.is_remote(self.pretrained)

    @contextlib.contextmanager
    def local_pretrained(self) -> Iterator[str | None]:
        """``pretrained`` as open_clip takes it: a tag or a local file (a URL's object copied here)."""
        if self.pretrained is None or not self.remote_checkpoint():
            yield self.pretrained
            return
        with storage.local_copy(self.pretrained) as path:
            yield str(path)

    def check(self) -> None:
        """Fail fast, before any download or shard, on a name or tag open_clip cannot resolve."""
        register_project_models()
        if self.model not in open_clip.list_models():
            raise ModelLoadError(
                f"unknown model {self.model!r}: not an open_clip config nor one of conf/models "
                f"(see open_clip.list_models(); project models: {project_models()})"
            )
        if self.pretrained is None or self.checkpoint_path() is not None:
            return
        if self.remote_checkpoint():
            raise ModelLoadError(f"--pretrained {storage.url(self.pretrained)}: no such checkpoint object")
        tags = open_clip.list_pretrained_tags_by_model(self.model)
        if self.pretrained not in tags:
            raise ModelLoadError(
                f"--pretrained {self.pretrained!r} is neither an existing checkpoint file nor a pretrained "
                f"tag of {self.model} (tags: {', '.join(tags) or 'none; pass a checkpoint path'})"
            )

    def fetch(self) -> None:
        """Download a tag's weights once, in the driver, so workers load them from the local cache.

        A tag that cannot be fetched fails here with advice, not later inside every worker.
        """
        self.check()
        if self.pretrained is None or self.checkpoint_path() is not None:
            return
        try:
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(self.model, self.pretrained))
        except Exception as exc:  # hub, network and cache errors come in many types
            raise self._fetch_error(exc) from exc

    def _fetch_error(self, exc: Exception) -> ModelLoadError:
        return ModelLoadError(
            f"cannot fetch the {self.model} weights tagged {self.pretrained!r} ({exc}). Without access "
            "to the model hub, copy a Hugging Face cache that has them (HF_HOME) to this machine, or "
            "download open_clip_pytorch_model.bin elsewhere and pass its path as --pretrained."
        )

    def load(self, device: torch.device) -> ClipBundle:
        """Build the model in fp32 on ``device`` (lower precision is applied by autocast)."""
        self.check()
        if self.pretrained is None:
            log.warning(
                "%s has random weights: its scores mean nothing (use for benchmarks only)", self.model
            )
        try:
            with self.local_pretrained() as pretrained:
                return load_clip(self.model, pretrained, device=str(device), precision="fp32")
        except Exception as exc:  # torch.load and open_clip raise many types for a bad file or download
            if self.checkpoint_path() is not None:
                raise ModelLoadError(
                    f"cannot load checkpoint {self.pretrained} into {self.model}: {exc}"
                ) from exc
            raise self._fetch_error(exc) from exc


def project_models() -> list[str]:
    from curation.core.models import MODEL_CONF_DIR

    return sorted(p.stem for p in MODEL_CONF_DIR.glob("*.json"))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The content hash of a local file or an object (streamed: a checkpoint can be gigabytes)."""
    loc = storage.location(path)
    digest = hashlib.sha256()
    with storage.storage_errors(loc, "read"), loc.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_devices(device: str | Sequence[str]) -> list[torch.device]:
    """Expand ``auto`` / ``cuda`` to every visible GPU (``auto`` is the CPU when there is none)."""
    if not isinstance(device, str):
        devices = [torch.device(d) for d in device]
    elif device in ("auto", "cuda"):
        n = torch.cuda.device_count()
        if device == "cuda" and n == 0:
            raise ModelLoadError("--device cuda, but torch sees no CUDA device")
        devices = [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]
    else:
        devices = [torch.device(device)]
    if not devices:
        raise ModelLoadError("device: an empty device list")
    for d in devices:
        if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
            raise ModelLoadError(f"device {d} is not visible (torch sees {torch.cuda.device_count()} GPUs)")
    return devices


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: exact fp32 on CPU, bf16 autocast on a GPU that has it (fp16 otherwise)."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
