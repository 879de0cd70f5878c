"""Typed configuration of the synthetic crawl (``conf/synth/default.yaml``)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from curation.core.config import ConfigModel
from curation.synth.captions import FAMILIES
from curation.synth.classes import CONCEPTS, DEFAULT_CLASSES
from curation.synth.junk import JunkKind
from curation.synth.render import get_style


class SourceConfig(ConfigModel):
    """One web source: its share of the crawl, visual style, caption habits and junk rates."""

    weight: float = Field(gt=0)
    style: str
    caption_families: dict[str, float]
    junk: dict[JunkKind, float] = Field(default_factory=dict)
    png_fraction: float = Field(0.0, ge=0, le=1)
    suffix_prob: float = Field(0.25, ge=0, le=1)

    @field_validator("style")
    @classmethod
    def _known_style(cls, v: str) -> str:
        get_style(v)
        return v

    @field_validator("caption_families")
    @classmethod
    def _known_families(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(FAMILIES)
        if unknown or not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"caption_families must weight known families {sorted(FAMILIES)}, got {v}")
        return v

    @field_validator("junk")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        if any(p < 0 for p in v.values()) or sum(v.values()) > 1:
            raise ValueError(f"junk rates must be >= 0 and sum to <= 1, got sum {sum(v.values()):.3f}")
        return v


class SuiteConfig(ConfigModel):
    """Held-out evaluation sets (CLIP_benchmark webdataset layout)."""

    per_class: int = Field(50, ge=1)  # images per class in each classification set
    retrieval_pairs: int = Field(400, ge=1)
    shard_size: int = Field(1000, ge=1)


class SeedSetConfig(ConfigModel):
    """A small clean set (true captions, crawl styles) for training the reference CLIP."""

    n: int = Field(2000, ge=1)
    shard_size: int = Field(1000, ge=1)


class ImagenetConfig(ConfigModel):
    """The ImageNet analogue: labelled photos plus YFCC100M-like Flickr metadata."""

    per_class: int = Field(60, ge=1)
    shard_size: int = Field(1000, ge=1)
    styles: dict[str, float] | None = None  # style -> weight; None: the crawl's source mix (like synth_id)
    meta_missing: float = Field(0.08, ge=0, le=1)  # index rows whose flickr_id has no metadata row
    meta_orphans: float = Field(0.05, ge=0, le=1)  # metadata rows not in the index (fraction of index)
    null_field: float = Field(0.12, ge=0, le=1)  # per-field chance of a null title/description/tags
    html: float = Field(0.3, ge=0, le=1)  # chance a text field carries HTML entities or markup
    names_class: float = Field(0.75, ge=0, le=1)  # chance the metadata mentions the class

    @field_validator("styles")
    @classmethod
    def _known_styles(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name in v or {}:
            get_style(name)
        if v is not None and (not v or min(v.values()) < 0 or sum(v.values()) <= 0):
            raise ValueError("imagenet.styles needs positive weights")
        return v


class SynthConfig(ConfigModel):
    """The whole synthetic crawl: sizes, sources, junk, and what else to generate beside it."""

    seed: int = Field(0, ge=0)
    n_pairs: int = Field(10000, ge=1)
    base_url: str = "http://127.0.0.1:8000"
    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_CLASSES))
    color_prior: float = Field(0.4, ge=0, le=1)
    synonym_fraction: float = Field(0.1, ge=0, le=1)
    multi_class_fraction: float = Field(0.05, ge=0, le=1)  # of clean pairs: caption names two classes
    foreign_name_prob: float = Field(0.7, ge=0, le=1)
    # Zipf exponent of the class frequencies (class i weighs 1 / (i + 1) ** class_skew): 0 is uniform;
    # > 0 gives the long tail that MetaCLIP balancing flattens
    class_skew: float = Field(0.0, ge=0)
    overlay_fraction: float = Field(0.0, ge=0, le=1)  # pictures with overlaid text or a watermark
    slow_delay_s: float = Field(1.0, ge=0)
    tiny_max_side: int = Field(24, ge=4, le=32)
    extreme_min_aspect: float = Field(3.5, gt=3)
    chunk_size: int = Field(200, ge=1)
    workers: int = Field(0, ge=0)  # 0 = all cores; never changes the output
    sources: dict[str, SourceConfig]
    suite: SuiteConfig = Field(default_factory=SuiteConfig)
    seed_set: SeedSetConfig = Field(default_factory=SeedSetConfig)
    imagenet: ImagenetConfig = Field(default_factory=ImagenetConfig)

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in CONCEPTS]
        if unknown or len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(f"classes must be >= 2 distinct names from {sorted(CONCEPTS)}; bad: {unknown}")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _has_sources(self) -> SynthConfig:
        if not self.sources:
            raise ValueError("at least one source is required")
        for name in self.sources:
            if not name.isidentifier():
                raise ValueError(f"source name {name!r} must be a simple identifier (it becomes a url path)")
        return self
