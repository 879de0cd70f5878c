"""Training presets: everything but the data is fixed, so curated sets are compared fairly.

As in DataComp, a preset names the model, batch size, optimiser, schedule, precision and the
samples-seen budget; only the training shards change between the runs of an ablation. Presets are
YAML files in ``conf/presets/`` (``tiny`` for CPUs, ``small`` and ``medium`` at DataComp's scales),
and a run may adjust one with a partial YAML (``-c``) and ``--set key=value`` overrides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from curation.core.config import CONF_DIR, ConfigError, ConfigModel, apply_overrides, build, read_yaml

PRESET_DIR = CONF_DIR / "presets"

Precision = Literal["fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16"]


class ImageSettings(ConfigModel):
    """Image side of the model's transforms; ``None`` keeps the model config's value."""

    size: int | None = Field(None, ge=8, description="force_image_size")
    interpolation: Literal["bicubic", "bilinear", "random"] | None = None
    resize_mode: Literal["shortest", "longest", "squash"] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    aug_scale: tuple[float, float] = (0.9, 1.0)


class TextSettings(ConfigModel):
    context_length: int | None = Field(None, ge=4, description="force_context_length")


class SupervisedSettings(ConfigModel):
    """What differs for the language-free baseline (``--supervised``); ``None`` keeps the CLIP value."""

    lr: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class Preset(ConfigModel):
    name: str
    description: str = ""
    model: str
    batch_size: int = Field(ge=1, description="global batch size (all GPUs together)")
    lr: float = Field(gt=0)
    wd: float = Field(ge=0)
    warmup: int = Field(ge=0, description="warmup steps")
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float | None = None
    precision: Precision = "fp32"
    samples_seen: int = Field(ge=1, description="budget of the equal_samples mode")
    checkpoints: int = Field(1, ge=1, description="resume points in equal_samples mode")
    workers: int = Field(1, ge=0)
    log_every_n_steps: int = Field(100, ge=1)
    save_frequency: int = Field(0, ge=0, description="also keep epoch_N.pt every N epochs (0: final only)")
    grad_checkpointing: bool = False
    local_loss: bool = False
    gather_with_grad: bool = False
    image: ImageSettings = Field(default_factory=ImageSettings)
    text: TextSettings = Field(default_factory=TextSettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)

    def model_kwargs(self) -> dict[str, Any]:
        """``create_model_and_transforms`` keyword arguments the preset sets beyond the model name."""
        values = {
            "force_image_size": self.image.size,
            "image_interpolation": self.image.interpolation,
            "image_resize_mode": self.image.resize_mode,
            "image_mean": list(self.image.mean) if self.image.mean else None,
            "image_std": list(self.image.std) if self.image.std else None,
            "force_context_length": self.text.context_length,
        }
        return {k: v for k, v in values.items() if v is not None}


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name (``tiny``) or a path to a preset YAML."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets())}")
    return path


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_preset(
    name_or_path: str | Path = "tiny", config: str | Path | None = None, overrides: Sequence[str] = ()
) -> Preset:
    """The preset, with a partial YAML ``config`` merged over it, then dotted ``overrides``."""
    path = preset_path(name_or_path)
    data = read_yaml(path)
    if config is not None:
        data = _merge(data, read_yaml(config))
    data = apply_overrides(data, overrides)
    return build(Preset, data, source=str(path) + (f" + {config}" if config else ""))
