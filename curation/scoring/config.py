"""Settings of the score stage (``conf/score/*.yaml``): which reference model, where it runs, how fast."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from curation.core.config import ConfigModel

COLUMN_RE = re.compile(r"^[a-z][a-z0-9_]*$")
Precision = Literal["auto", "fp32", "fp16", "bf16"]


def default_column(model: str) -> str:
    """``ViT-B-32`` -> ``clip_score_vit_b_32``: one column per reference model, side by side."""
    return "clip_score_" + re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")


class ScoreConfig(ConfigModel):
    """One reference CLIP scoring a pool. ``pretrained`` must be given: a tag, a path, or null (random)."""

    model: str = Field(description="open_clip model name, e.g. ViT-B-32 or a project config like tiny-vit")
    pretrained: str | None = Field(
        description="open_clip pretrained tag (laion2b_s34b_b79k), a checkpoint path, "
        "or null for random weights (benchmarks only)"
    )
    column: str | None = Field(None, description="score column and attribute dir; default clip_score_<model>")
    device: str | list[str] = Field(
        "auto",
        description="auto | cpu | cuda (every visible GPU) | cuda:N | a list; worker k uses entry k % n",
    )
    precision: Precision = Field(
        "auto", description="auto = fp32 on CPU, bf16 on CUDA; fp16/bf16 via autocast"
    )
    batch_size: int = Field(256, ge=1)
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader processes decoding images per model process; null = auto: on a CPU 1 "
        "(0 with a single core), on a GPU every core of the model process's share but one",
    )
    prefetch_factor: int = Field(4, ge=1, description="batches each loader process keeps ready")
    threads: int | None = Field(None, ge=1, description="torch threads of the model process; null = auto")
    embeddings: bool = Field(True, description="also store L2-normalised image_emb / text_emb as float16")
    jpeg_draft: int | None = Field(
        None,
        ge=1,
        description="decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) that keeps them at least this many "
        "times the model input, then the model's resize: null = exact; 2 = near-exact; 1 = fastest",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device_list(cls, v: object) -> object:
        """``cuda:0,cuda:2`` on the command line means a list of devices."""
        return [d.strip() for d in v.split(",")] if isinstance(v, str) and "," in v else v

    @field_validator("column")
    @classmethod
    def _column_name(cls, v: str | None) -> str | None:
        if v is not None and not COLUMN_RE.match(v):
            raise ValueError("column must be lower-case letters, digits and _ and start with a letter")
        return v

    @property
    def score_column(self) -> str:
        return self.column or default_column(self.model)
