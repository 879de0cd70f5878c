"""Evaluation settings (``conf/eval/default.yaml``), shared by ``curate evaluate`` and ``robustness``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from curation.core.config import CONF_DIR, ConfigModel, load_config
from trainer.robustness import BootstrapConfig

DEFAULT_CONFIG = CONF_DIR / "eval" / "default.yaml"


class BootstrapSettings(ConfigModel):
    samples: int = Field(1000, ge=0)
    seed: int = 0
    level: float = Field(0.95, gt=0, lt=1)

    def as_config(self) -> BootstrapConfig:
        return BootstrapConfig(self.samples, self.seed, self.level)


class ProbeSettings(ConfigModel):
    enabled: bool = False
    C: float = Field(1.0, gt=0)
    max_iter: int = Field(1000, gt=0)
    test_fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = 0


class EvalConfig(ConfigModel):
    batch_size: int = Field(64, gt=0)
    workers: int = Field(2, ge=0)
    device: str = "auto"
    precision: str = "fp32"  # open_clip precisions; "amp" autocasts on CUDA
    recall_k: list[int] = Field(default_factory=lambda: [1, 5, 10])
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    linear_probe: ProbeSettings = Field(default_factory=ProbeSettings)
    suites: dict[str, str] = Field(default_factory=lambda: {"synthetic": "data/synth/suite"})
    svg: bool = False


def load_eval_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> EvalConfig:
    return load_config(EvalConfig, path or DEFAULT_CONFIG, overrides)
