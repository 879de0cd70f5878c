"""Selection step kinds: a registry of small classes, composed by a declarative YAML tree.

(Over 400 lines: every built-in step kind is a small class over the same Frame and gate helpers; one file
keeps the step language readable in one place.)

A step is written as a one-key mapping, ``{kind: settings}``; set operations take a list of steps::

    steps:                                   # a chain: each step works on what the previous kept
      - filter: {stage: filters}             # every <name>_keep verdict of `curate filter`
      - intersection:
          - topk: {score: clip:clip_score, fraction: 0.3}
          - subset: {path: image_clusters.npy}

Every step compiles to two SQL columns on the selection frame: a multiplicity (0 = dropped, k = write
k times) and the reason a row was dropped. Steps that rank globally (``topk``, ``random``) first
resolve their cut over the rows their input keeps, with a few out-of-core DuckDB scans
(:mod:`curation.selection.ranking`), then become a row predicate like the others. Multiplicities compose as
multisets, exactly as :mod:`curation.core.subset` does: union = max, intersection = min, difference =
drop what the others keep, concat = sum, repeat = times.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from curation.core import storage
from curation.core.config import ConfigError, ConfigModel, build
from curation.core.pool import Pool
from curation.core.registry import Registry
from curation.core.subset import Subset
from curation.selection.frame import ColumnRef, Frame, SelectionError
from curation.selection.ranking import ROW_ID, draw_sample, find_cut, sql_literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compiled:
    """Names of a step's multiplicity and drop-reason columns on the frame."""

    m: str
    r: str


class StepConfig(ConfigModel):
    name: str | None = None  # label in the funnel and the manifest (default: the kind)


class Step(ABC):
    """One node of a selection tree."""

    kind: ClassVar[str] = ""
    config_cls: ClassVar[type[StepConfig]] = StepConfig

    def __init__(self, cfg: StepConfig, nested: dict[str, Step] | None = None) -> None:
        self.cfg = cfg
        self.nested = nested or {}  # child steps by setting name (``within``, ``of``, list items)

    @classmethod
    def from_spec(cls, value: Any, where: str) -> Step:
        """Build from the settings mapping; settings in :meth:`nested_keys` are parsed as steps."""
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: settings must be a mapping, got {value!r}")
        settings = dict(value or {})
        nested = {
            k: parse_step(settings.pop(k), f"{where}.{k}") for k in cls.nested_keys() if settings.get(k)
        }
        for k in cls.nested_keys():
            settings.pop(k, None)
        return cls(build(cls.config_cls, settings, source=where), nested)

    @classmethod
    def nested_keys(cls) -> tuple[str, ...]:
        return ()

    @property
    def children(self) -> list[Step]:
        return list(self.nested.values())

    @property
    def label(self) -> str:
        return self.cfg.name or self.kind

    def bind(self, pool: Pool) -> None:
        """Look at the pool once before compiling (e.g. which verdict columns a stage has)."""
        for ch in self.children:
            ch.bind(pool)

    def prepare(self, pool: Pool, run: Callable[[Any], Any]) -> None:
        """Per-shard work a step needs before columns are gathered (e.g. matching captions), run as
        a shard job through ``run(job) -> JobReport`` on the selection's engine; none by default."""
        for ch in self.children:
            ch.prepare(pool, run)

    def columns(self) -> list[ColumnRef]:
        """Columns the step reads (its own and its children's)."""
        return [c for ch in self.children for c in ch.columns()]

    def subsets(self) -> list[str]:
        return [s for ch in self.children for s in ch.subsets()]

    def compile_within(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        """The input a ranking step ranks among: its own ``within`` step if given, else its input."""
        if "within" in self.nested:
            return self.nested["within"].compile(frame, within, decisions)
        return within

    @abstractmethod
    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        """Add this step's columns to ``frame``, restricted to the rows ``within`` keeps."""


STEPS: Registry[type[Step]] = Registry("step kind", "select_steps")


def step_kind(kind: str, config: type[StepConfig] = StepConfig) -> Callable[[type[Step]], type[Step]]:
    """Class decorator: the ``kind`` a step answers to and its settings' model (registration is the
    step's entry-point line in ``clip_curation.select_steps``; its name must equal ``kind``)."""

    def deco(cls: type[Step]) -> type[Step]:
        cls.kind = kind
        cls.config_cls = config
        return cls

    return deco


def parse_step(spec: Any, where: str = "steps") -> Step:
    """A step from its one-key mapping ``{kind: settings}``."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: a step is a mapping with exactly one key, its kind ({', '.join(STEPS.names())}); "
            f"got {spec!r}"
        )
    ((kind, value),) = spec.items()
    return STEPS.get(kind, where).from_spec(value, f"{where}.{kind}")


def gate(frame: Frame, within: Compiled, passed: str, reason: str, mult: str = "1") -> Compiled:
    """A row-level rule inside ``within``: keep ``within``'s multiplicity x ``mult`` where ``passed``."""
    m = frame.add(f"CASE WHEN {within.m} > 0 AND ({passed}) THEN {within.m} * {mult} ELSE 0 END", "m")
    r = frame.add(f"CASE WHEN {within.m} = 0 THEN {within.r} WHEN {m} = 0 THEN {reason} END", "r")
    return Compiled(m, r)


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# --- leaves ---------------------------------------------------------------------------------------


@step_kind("all")
class AllStep(Step):
    """Every sample of the pool (the unfiltered baseline)."""

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        return within


class FilterConfig(StepConfig):
    stage: str = "filters"  # attribute stage written by `curate filter` (its job name)
    names: list[str] | None = None  # filters whose verdicts count; None: every <name>_keep column


@step_kind("filter", FilterConfig)
class FilterStep(Step):
    """Keep rows every named filter kept (``<name>_keep``); the reason is ``filtered_<name>``."""

    cfg: FilterConfig

    def bind(self, pool: Pool) -> None:
        self.names = self.cfg.names if self.cfg.names is not None else verdict_names(pool, self.cfg.stage)
        if not self.names:
            raise ConfigError(f"filter {self.label}: `names` is empty; leave it out to use every verdict")

    def columns(self) -> list[ColumnRef]:
        return [ColumnRef(self.cfg.stage, f"{n}_keep") for n in self.names]

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        cols = [(n, frame.col(ColumnRef(self.cfg.stage, f"{n}_keep"))) for n in self.names]
        passed = " AND ".join(f"coalesce({c}, FALSE)" for _, c in cols)
        whens = " ".join(
            f"WHEN {c} IS NULL THEN {sql_str('missing_verdict_' + n)} "
            f"WHEN NOT {c} THEN {sql_str('filtered_' + n)}"
            for n, c in cols
        )
        return gate(frame, within, passed, f"CASE {whens} END")


def verdict_names(pool: Pool, stage: str) -> list[str]:
    """Filter names with a ``<name>_keep`` verdict column in a stage's attribute tables."""
    files = storage.list_files(pool.attributes_dir(stage), "*.parquet")
    if not files:
        where = storage.url(pool.attributes_dir(stage))
        raise SelectionError(f"no verdicts under {where}; run `curate filter` first")
    schema = storage.read_parquet_schema(files[0])
    names = [c.removesuffix("_keep") for c in schema.names if c.endswith("_keep")]
    if not names:
        raise SelectionError(f"attribute stage {stage!r} has no <name>_keep verdict columns")
    return names


class ThresholdConfig(StepConfig):
    score: str | dict[str, str]
    min: float | None = None  # keep score >= min
    max: float | None = None  # keep score <= max

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdConfig:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


@step_kind("threshold", ThresholdConfig)
class ThresholdStep(Step):
    """An absolute threshold (DataComp's ``--threshold``: keep score >= min)."""

    cfg: ThresholdConfig

    def columns(self) -> list[ColumnRef]:
        return [ColumnRef.parse(self.cfg.score)]

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        v = frame.score_col(ColumnRef.parse(self.cfg.score))
        rules = [(f"NOT {frame.valid(v)}", "missing_score")]
        # a float column's bounds take its type, as numpy compares a float32 column with a Python float
        kind = frame.type_of(v) if frame.is_float(v) else "DOUBLE"
        if self.cfg.min is not None:
            rules.append((f"{v} < {sql_literal(self.cfg.min, kind)}", "below_threshold"))
        if self.cfg.max is not None:
            rules.append((f"{v} > {sql_literal(self.cfg.max, kind)}", "above_threshold"))
        passed = " AND ".join(f"NOT ({cond})" for cond, _ in rules)
        reason = "CASE " + " ".join(f"WHEN {c} THEN {sql_str(r)}" for c, r in rules) + " END"
        score = ColumnRef.parse(self.cfg.score).label()
        decisions.append(
            {"step": self.label, "kind": self.kind, "score": score, "min": self.cfg.min, "max": self.cfg.max}
        )
        return gate(frame, within, passed, reason)


class SubsetConfig(StepConfig):
    path: storage.Location  # a subset .npy (DataComp format; a path or a URL), e.g. from another tool


@step_kind("subset", SubsetConfig)
class SubsetStep(Step):
    """Rows whose uid is in a subset file (its multiplicities carry over)."""

    cfg: SubsetConfig

    def subsets(self) -> list[str]:
        if not self.cfg.path.exists():
            raise SelectionError(f"subset file not found: {storage.url(self.cfg.path)}")
        return [storage.url(self.cfg.path)]

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        s = frame.subset_col(storage.url(self.cfg.path))
        return gate(frame, within, f"{s} > 0", sql_str("not_in_subset"), mult=s)


# --- global rankings --------------------------------------------------------------------------------


class RankConfig(StepConfig):
    """Size of a ranking step. A ``within: STEP`` setting (parsed as a step, not stored here) ranks
    only among the rows that step keeps instead of the step's input."""

    fraction: float | None = Field(None, gt=0, le=1)
    count: int | None = Field(None, ge=0)

    def size_settings(self) -> int:
        return sum(x is not None for x in (self.fraction, self.count))


class TopKConfig(RankConfig):
    score: str | dict[str, str]
    descending: bool = True  # False: keep the lowest scores
    # exact: exactly k = round(fraction * rows with a score) rows, ties at the cut to the smaller uid.
    # datacomp: DataComp's baselines: t = the score at index int(fraction * candidates) of the scores
    # sorted high to low (candidates include rows without a score), keep score >= t.
    semantics: Literal["exact", "datacomp"] = "exact"

    @model_validator(mode="after")
    def _size(self) -> TopKConfig:
        if self.size_settings() != 1:
            raise ValueError("give exactly one of fraction, count")
        if self.semantics == "datacomp" and self.fraction is None:
            raise ValueError("semantics 'datacomp' is defined by a fraction")
        return self


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


@step_kind("topk", TopKConfig)
class TopKStep(Step):
    """The best ``fraction``/``count`` rows by a score, exact over the whole pool (see ranking.py)."""

    cfg: TopKConfig

    @classmethod
    def nested_keys(cls) -> tuple[str, ...]:
        return ("within",)

    def columns(self) -> list[ColumnRef]:
        return [ColumnRef.parse(self.cfg.score), *super().columns()]

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        within = self.compile_within(frame, within, decisions)
        ref = ColumnRef.parse(self.cfg.score)
        v = frame.score_col(ref)
        valid = frame.valid(v)
        sample = draw_sample(frame, frame.relation(f"{within.m} > 0"), v, valid, frame.rows_estimate)
        n_cand, n_valid = sample.candidates, sample.valid
        cfg = self.cfg
        if cfg.semantics == "datacomp":
            assert cfg.fraction is not None
            k = int(n_cand * cfg.fraction) + 1  # DataComp: threshold = sorted_desc[int(len(df) * fraction)]
            if k > n_valid:
                log.warning(
                    "%s: DataComp's rank %d is beyond the %d valid scores; keeping all",
                    self.label,
                    k,
                    n_valid,
                )
        else:
            k = (
                round_half_up(cfg.fraction * n_valid)
                if cfg.fraction is not None
                else min(cfg.count or 0, n_valid)
            )
        relation = frame.relation(f"{within.m} > 0 AND {valid}", f"uid, {ROW_ID}, {v}")
        cut = find_cut(
            frame,
            relation,
            v,
            k,
            sample,
            descending=cfg.descending,
            uid_ties=cfg.semantics == "exact",
            sql_type=frame.type_of(v),
        )
        decisions.append(
            {
                "step": self.label,
                "kind": self.kind,
                "score": ref.label(),
                "fraction": cfg.fraction,
                "count": cfg.count,
                "semantics": cfg.semantics,
                "candidates": n_cand,
                "with_score": n_valid,
                "missing_score": n_cand - n_valid,
                "kth_value": cut.to_dict()["value"],
                "cut": cut.to_dict(),
            }
        )
        reason = f"CASE WHEN NOT {valid} THEN 'missing_score' ELSE 'below_topk' END"
        return gate(frame, within, f"{valid} AND {cut.predicate(v)}", reason)


class RandomConfig(RankConfig):
    size_of: storage.Location | None = None  # match the size of this subset .npy (path or URL): a control
    seed: int = 0

    @model_validator(mode="after")
    def _size(self) -> RandomConfig:
        if self.size_settings() + (self.size_of is not None) != 1:
            raise ValueError("give exactly one of fraction, count, size_of")
        return self


def random_key_sql(seed: int, uid: str = "uid") -> str:
    """A seeded pseudo-random 64-bit key per uid: the first 8 bytes of MD5('<seed>:<uid>'), little-endian.

    MD5 is fixed forever, so the same seed draws the same rows on any engine, machine or DuckDB
    version, and the draw of a subset is a prefix of the draw of a larger one.
    """
    return f"md5_number_upper({sql_str(f'{seed}:')} || lower({uid}))"


@step_kind("random", RandomConfig)
class RandomStep(Step):
    """A seeded uniform sample of exact size: the rows with the smallest seeded hash of their uid."""

    cfg: RandomConfig

    @classmethod
    def nested_keys(cls) -> tuple[str, ...]:
        return ("within",)

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        within = self.compile_within(frame, within, decisions)
        key = frame.add(random_key_sql(self.cfg.seed), "k")
        frame.types[key] = "UBIGINT"
        sample = draw_sample(frame, frame.relation(f"{within.m} > 0"), key, "TRUE", frame.rows_estimate)
        n = sample.valid
        cfg = self.cfg
        if cfg.size_of is not None:
            k = min(len(Subset.load(cfg.size_of)), n)
        elif cfg.fraction is not None:
            k = round_half_up(cfg.fraction * n)
        else:
            k = min(cfg.count or 0, n)
        relation = frame.relation(f"{within.m} > 0", f"uid, {ROW_ID}, {key}")
        cut = find_cut(frame, relation, key, k, sample, descending=False, sql_type="UBIGINT")
        decisions.append(
            {
                "step": self.label,
                "kind": self.kind,
                "seed": cfg.seed,
                "fraction": cfg.fraction,
                "count": cfg.count,
                "size_of": storage.url(cfg.size_of) if cfg.size_of is not None else None,
                "candidates": n,
                "k": k,
                "cut": cut.to_dict(),
            }
        )
        return gate(frame, within, cut.predicate(key), "'not_sampled'")


# --- DataComp's basic filter, in selection terms ----------------------------------------------------

# Python's str.split() splits on every character for which str.isspace() is true; RE2's \s is ASCII
# only, so the class is spelled out to count words exactly as DataComp's `len(text.split())` does.
_PY_SPACE = "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace())
WORD_RE = f"[^{_PY_SPACE}]+"


class DataCompBasicConfig(StepConfig):
    text: str = "caption"  # pool column; "caption" also finds DataComp's "text"
    # language code per sample: a pool column (DataComp pools: compute it first) or an attribute,
    # e.g. "filters:lang" from the language filter of `curate filter`
    lang: str | dict[str, str] = "lang"
    english: str = "en"
    min_words: int = 3  # DataComp: more than 2 words (len(text.split()) > 2)
    min_chars: int = 6  # ... and more than 5 characters
    min_side: int = 200  # min(original_width, original_height) >= 200
    max_aspect: float = 3.0  # max / min <= 3
    width: str = "original_width"
    height: str = "original_height"


@step_kind("datacomp_basic", DataCompBasicConfig)
class DataCompBasicStep(Step):
    """DataComp's "basic filtering" baseline: English (fastText), caption and image-size rules."""

    cfg: DataCompBasicConfig

    def columns(self) -> list[ColumnRef]:
        c = self.cfg
        return [
            ColumnRef(None, c.text),
            ColumnRef.parse(c.lang),
            ColumnRef.parse(c.width),
            ColumnRef.parse(c.height),
        ]

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        c = self.cfg
        text = f"coalesce({frame.col(ColumnRef(None, c.text))}, '')"
        lang = frame.col(ColumnRef.parse(c.lang))
        w, h = frame.col(ColumnRef.parse(c.width)), frame.col(ColumnRef.parse(c.height))
        words = frame.add(f"len(regexp_extract_all({text}, '{WORD_RE}'))", "w")
        side, longest = f"least({w}, {h})", f"greatest({w}, {h})"
        rules = [
            (f"{lang} IS NULL", "missing_lang"),
            (f"{lang} <> {sql_str(c.english)}", "not_english"),
            (f"{words} < {c.min_words}", "too_few_words"),
            (f"length({text}) < {c.min_chars}", "too_few_chars"),
            (f"{w} IS NULL OR {h} IS NULL", "missing_size"),
            (f"{side} < {c.min_side}", "too_small"),
            (f"NOT (CAST({longest} AS DOUBLE) / {side} <= {c.max_aspect!r})", "extreme_aspect"),
        ]
        passed = " AND ".join(f"coalesce(NOT ({cond}), FALSE)" for cond, _ in rules)
        reason = "CASE " + " ".join(f"WHEN {cond} THEN {sql_str(r)}" for cond, r in rules) + " END"
        return gate(frame, within, passed, reason)


# --- composition ------------------------------------------------------------------------------------


class ListStep(Step):
    """A step over a list of child steps: ``[steps]`` or ``{name: ..., of: [steps]}``."""

    @classmethod
    def from_spec(cls, value: Any, where: str) -> Step:
        name = None
        if isinstance(value, dict):
            if set(value) - {"name", "of"} or "of" not in value:
                raise ConfigError(f"{where}: expected a list of steps or {{name: ..., of: [steps]}}")
            name, value = value.get("name"), value["of"]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected a non-empty list of steps")
        nested = {str(i): parse_step(v, f"{where}[{i}]") for i, v in enumerate(value)}
        return cls(StepConfig(name=name), nested)


@step_kind("steps")
class ChainStep(ListStep):
    """A sequence: each step works on the rows the previous one kept ("basic filter, then top 30%")."""

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        for ch in self.children:
            within = ch.compile(frame, within, decisions)
        return within


class CombineStep(ListStep):
    """A set operation over child steps, each evaluated inside the same input."""

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        parts = [ch.compile(frame, within, decisions) for ch in self.children]
        m = frame.add(self.combine([p.m for p in parts]), "m")
        r = frame.add(self.reason(parts, m), "r")
        return Compiled(m, r)

    @abstractmethod
    def combine(self, mults: list[str]) -> str:
        """SQL multiplicity of the result from the children's multiplicities."""

    def reason(self, parts: list[Compiled], m: str) -> str:
        """Why a row is not in the result: by default the first child's reason."""
        return f"CASE WHEN {m} = 0 THEN {parts[0].r} END"


@step_kind("union")
class UnionStep(CombineStep):
    """Rows any child keeps; a repeated row keeps its largest multiplicity."""

    def combine(self, mults: list[str]) -> str:
        return f"greatest({', '.join(mults)})"


@step_kind("intersection")
class IntersectionStep(CombineStep):
    """Rows every child keeps (smallest multiplicity); the reason is the first child that dropped it."""

    def combine(self, mults: list[str]) -> str:
        return f"least({', '.join(mults)})"

    def reason(self, parts: list[Compiled], m: str) -> str:
        return "CASE " + " ".join(f"WHEN {p.m} = 0 THEN {p.r}" for p in parts) + " END"


@step_kind("difference")
class DifferenceStep(CombineStep):
    """The first child's rows that none of the others keep."""

    def combine(self, mults: list[str]) -> str:
        if len(mults) == 1:
            return mults[0]
        return f"CASE WHEN greatest({', '.join(mults[1:])}) > 0 THEN 0 ELSE {mults[0]} END"

    def reason(self, parts: list[Compiled], m: str) -> str:
        excluded = sql_str("excluded_by_" + "_".join(ch.label for ch in self.children[1:]))
        return f"CASE WHEN {parts[0].m} = 0 THEN {parts[0].r} WHEN {m} = 0 THEN {excluded} END"


@step_kind("concat")
class ConcatStep(CombineStep):
    """Multiset sum: a row kept by two children is written twice (mixing that upsamples overlaps)."""

    def combine(self, mults: list[str]) -> str:
        return " + ".join(mults)


class RepeatConfig(StepConfig):
    times: int = Field(ge=0)


@step_kind("repeat", RepeatConfig)
class RepeatStep(Step):
    """Every row of a step ``times`` times (upsampling): ``{times: 2, of: STEP}``."""

    cfg: RepeatConfig

    @classmethod
    def nested_keys(cls) -> tuple[str, ...]:
        return ("of",)

    @classmethod
    def from_spec(cls, value: Any, where: str) -> Step:
        step = super().from_spec(value, where)
        if "of" not in step.nested:
            raise ConfigError(f"{where}: missing `of: STEP` (the step to repeat)")
        return step

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        inner = self.nested["of"].compile(frame, within, decisions)
        m = frame.add(f"{self.cfg.times} * {inner.m}", "m")
        r = frame.add(f"CASE WHEN {m} = 0 THEN coalesce({inner.r}, 'repeated_zero_times') END", "r")
        return Compiled(m, r)
