"""What an ablation is: its config, its grid of sets and cells, and the records a run produces.

These types sit below the runner (:mod:`workflows.ablation`), the results table
(:mod:`workflows.ablation_results`) and the report (:mod:`workflows.ablation_report`), so that each of
those imports them and none imports another one upwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from upath import UPath

from curation.core.config import ConfigModel

CELL_FILE = "cell.json"  # the finished-cell marker, holding the cell's record
ERROR_FILE = "error.json"
SET_FILE = "set.json"  # the materialised-set marker
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Mode = Literal["one_epoch", "equal_samples"]
Kind = Literal["topk", "random", "named", "baseline", "mix"]
MIX_MODE = "equal_samples"  # mixes are compared at the same samples seen


# ---------------------------------------------------------------- config


class BaselineConfig(ConfigModel):
    """Supervised models on the labelled in-distribution training set: the effective-robustness line."""

    shards: str | None = None  # training shards with KEY.cls (the synthetic crawl's imagenet/train)
    classnames: str | None = None  # default: classnames.txt beside or above the shards
    budgets: list[int] = Field(default_factory=list)  # samples seen of each baseline model
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("budgets must be positive sample counts")
        return sorted(set(v))

    @model_validator(mode="after")
    def _shards_given(self) -> BaselineConfig:
        if self.budgets and not self.shards:
            raise ValueError("baselines.budgets needs baselines.shards (labelled training shards)")
        return self


class MixExperimentConfig(ConfigModel):
    """ "Quality, not quantity" (Nguyen et al. 2022): does adding a noisier source dilute robustness?

    Two or more sets of the same candidates (within ``within``): every sample of the clean source(s)
    alone, and the same clean samples plus noisy-source samples making up each ``noisy_shares`` of
    the mixed set. Each is trained at the same samples seen (equal_samples mode), so a change of ER
    is the mix's doing, not more compute.
    """

    clean: list[str] = Field(min_length=1)  # values of the pool's ``source`` column
    noisy: list[str] = Field(min_length=1)
    noisy_shares: list[float] = Field(default_factory=lambda: [0.5])  # noisy fraction of each mixed set
    seed: int = 0

    @field_validator("noisy_shares")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < s < 1 for s in v):
            raise ValueError("noisy_shares are fractions in (0, 1)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _disjoint(self) -> MixExperimentConfig:
        both = set(self.clean) & set(self.noisy)
        if both:
            raise ValueError(f"sources cannot be both clean and noisy: {sorted(both)}")
        return self


class AblationConfig(ConfigModel):
    name: str = "quality_threshold"
    pool: str  # img2dataset pool (tars + parquet) with the score's attribute table
    # STAGE:COLUMN of an attribute table (`curate score` with the tiny reference CLIP writes this one), or a
    # pool column (DataComp's clip_l14_similarity_score); higher is better
    score: str = "clip_score_tiny_vit:clip_score_tiny_vit"
    within: str | None = None  # rank only among the samples this filter stage kept (e.g. "filters")
    topk: list[float] = Field(default_factory=lambda: [20.0, 40.0, 60.0, 80.0, 100.0])  # percent
    random_control: bool = True  # a seeded random subset of each top-k size (not for k = 100: same set)
    random_seed: int = 0
    named_sets: dict[str, str] = Field(default_factory=dict)  # name -> subset .npy made elsewhere
    # named sets that get a seeded random control of their size (``random_<name>``, drawn like the
    # top-k controls), so a curation method made elsewhere is judged against chance at its own size
    named_controls: list[str] = Field(default_factory=list)
    preset: str = "tiny"
    preset_overrides: list[str] = Field(default_factory=list)  # key=value, as `curate train --set`
    modes: list[Mode] = Field(default_factory=lambda: ["one_epoch", "equal_samples"])
    samples_seen: int | None = Field(None, ge=1)  # equal_samples budget (default: the preset's)
    seeds: list[int] = Field(default_factory=lambda: [0])
    suite: str = "data/synth/suite"
    eval_config: str | None = None  # default conf/eval/default.yaml
    eval_overrides: list[str] = Field(default_factory=list)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    mix: MixExperimentConfig | None = None  # the mixing experiment (sets of kind ``mix``); null: none
    reshard: dict[str, Any] = Field(default_factory=dict)  # curation.reshard.plan.ReshardConfig fields
    workers: int = Field(1, ge=1)  # shard workers of selection and resharding
    engine: Literal["local", "spark", "ray"] = "local"  # where selection and resharding run their shards
    parallel_cells: int = Field(1, ge=1)  # cells trained at once (one tiny CPU training uses ~2 cores)
    device: str = "auto"
    power_law_offset: bool = False  # fit error = a * N^-b + c instead of a * N^-b

    @field_validator("topk")
    @classmethod
    def _percentages(cls, v: list[float]) -> list[float]:
        if any(not 0 < k <= 100 for k in v):
            raise ValueError("topk values are percentages in (0, 100]")
        return sorted(set(v))

    @field_validator("named_sets")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [n for n in v if not NAME_RE.match(n) or "__" in n]
        if bad:
            raise ValueError(f"set names must be [A-Za-z0-9_.-] without '__': {bad}")
        return v

    @model_validator(mode="after")
    def _controls_name_sets(self) -> AblationConfig:
        unknown = sorted(set(self.named_controls) - set(self.named_sets))
        if unknown:
            raise ValueError(f"named_controls: {unknown} not in named_sets ({sorted(self.named_sets)})")
        return self


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class SetSpec:
    """One training set: how it is made, and what the results table says about it."""

    name: str
    kind: Kind
    k: float | None = None  # top-k percentage (topk and its random control)
    subset: str | None = None  # a given subset .npy (named sets; a named set's control: its set's file)
    control_of: str | None = None  # random: the set whose size it matches (a top-k or a named set)
    shards: str | None = None  # given training shards (baselines)
    clean: tuple[str, ...] = ()  # mix: the clean source(s), always all of their candidates
    noisy: tuple[str, ...] = ()  # mix: the noisy source(s) added (empty: the clean sources alone)
    share: float = 0.0  # mix: the noisy sources' fraction of the set


@dataclass(frozen=True)
class Cell:
    set: SetSpec
    mode: str
    seed: int
    samples_seen: int | None = None  # None: one_epoch, or the preset's equal_samples budget

    @property
    def id(self) -> str:
        return f"{self.set.name}__{self.mode}__s{self.seed}"


def topk_name(k: float) -> str:
    return f"top{k:g}"


def named_control_name(name: str) -> str:
    """The random control of named set ``name`` (the headline pairs them by this name)."""
    return f"random_{name}"


def expand_sets(cfg: AblationConfig) -> list[SetSpec]:
    """Top-k sets, their random controls, the named sets and theirs (baselines are cells of their own)."""
    sets = [SetSpec(topk_name(k), "topk", k=k) for k in cfg.topk]
    if cfg.random_control:
        sets += [SetSpec(f"random{k:g}", "random", k=k, control_of=topk_name(k)) for k in cfg.topk if k < 100]
    sets += [SetSpec(name, "named", subset=path) for name, path in cfg.named_sets.items()]
    sets += [
        SetSpec(named_control_name(name), "random", subset=cfg.named_sets[name], control_of=name)
        for name in dict.fromkeys(cfg.named_controls)
    ]
    sets += mix_sets(cfg)
    clash = {s.name for s in sets if s.kind == "named"} & {s.name for s in sets if s.kind != "named"}
    if clash:
        raise ValueError(f"named sets clash with generated set names: {sorted(clash)}")
    return sets


def mix_sets(cfg: AblationConfig) -> list[SetSpec]:
    """The mixing experiment's sets: ``mix_clean`` (clean sources alone), ``mix_noisyP`` per share."""
    m = cfg.mix
    if m is None:
        return []
    clean = tuple(m.clean)
    specs = [SetSpec("mix_clean", "mix", k=0.0, clean=clean)]
    specs += [
        SetSpec(f"mix_noisy{100 * s:g}", "mix", k=100 * s, clean=clean, noisy=tuple(m.noisy), share=s)
        for s in m.noisy_shares
    ]
    return specs


def expand_cells(cfg: AblationConfig) -> list[Cell]:
    """Every set x mode x seed (mixes: equal samples only), then the baselines (a cell per budget x seed)."""
    cells = [
        Cell(s, mode, seed, cfg.samples_seen if mode == "equal_samples" else None)
        for s in expand_sets(cfg)
        for mode in ([MIX_MODE] if s.kind == "mix" else cfg.modes)
        for seed in cfg.seeds
    ]
    b = cfg.baselines
    for budget in b.budgets:
        spec = SetSpec(f"supervised{budget}", "baseline", shards=b.shards)
        cells += [Cell(spec, "equal_samples", seed, budget) for seed in b.seeds]
    return cells


# ---------------------------------------------------------------- records


@dataclass
class SetInfo:
    """A materialised set: where its shards are, how big it is, or why it could not be made."""

    name: str
    shards: str | None = None
    subset: str | None = None
    size: int | None = None
    error: str | None = None


@dataclass
class CellRecord:
    """What one cell produced: its identity, the run's numbers, the evaluation records, or its error."""

    id: str
    set: str
    kind: str
    k: float | None
    mode: str
    seed: int
    status: str  # finished | failed
    subset_size: int | None = None
    samples_seen: int | None = None
    wall_s: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    run_dir: str | None = None
    eval_dir: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    reused: bool = False  # finished by an earlier run of the ablation, skipped by this one


@dataclass
class AblationResult:
    out: Path | UPath  # a local folder or a URL
    cells: list[CellRecord]
    sets: dict[str, SetInfo]

    @property
    def failed(self) -> list[CellRecord]:
        return [c for c in self.cells if c.status == "failed"]
