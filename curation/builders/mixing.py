"""Mixing sources: one subset drawn from several sources by weights or by counts.

(Over 400 lines: gathering, planning, drawing and the manifest are one pass over the same uid
arrays, and the manifest must say exactly what each step did, so they stay together.)

The reference papers ask "does mixing sources dilute robustness?"; answering it needs mixes whose
proportions are exactly what was asked and that come out the same for a seed. Candidates are
gathered per source (from a pool's ``source`` column, or a name given to a subset), sorted by uid
so the input order does not matter, and drawn with a generator seeded by ``(seed, source name)``
so adding a source never changes what is drawn from the others. Everything is numpy over
``u8,u8`` uid arrays: no Python object per sample.

Counts per source for a target total come from largest-remainder rounding (exact totals, each
count within one of its exact share). Without replacement a source cannot give more than it has:
the ``shortfall`` policy caps it (and reports it), shrinks the total to keep the proportions, or
errors. With replacement a source can give more than it has, which repeats uids (upsampling).

Sources can overlap: a subset drawn from a pool shares its uids with the pool's sources. Under
``overlap: exclude`` (the default) sources draw in name order and each draws only from the
candidates no earlier source has taken, so no uid is written twice unless a source upsamples
itself; ``overlap: allow`` draws every source independently and writes a uid once per source that
drew it. The stats (``in_other_source`` drops, ``cross_source_copies``, ``upsampled_copies``) and
the manifest say which happened and how often.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from curation.core.config import ConfigModel
from curation.core.io import atomic_write_parquet
from curation.core.rowsource import RowSource
from curation.core.stats import Counts, StageStats
from curation.core.subset import Subset
from curation.core.uid import UID_DTYPE, array_to_hex_column, hex_column_to_array

log = logging.getLogger(__name__)

Sampling = Literal["without_replacement", "with_replacement", "repeat"]
Shortfall = Literal["cap", "shrink", "error"]
Overlap = Literal["exclude", "allow"]


class MixError(ValueError):
    """A mix that cannot be made as asked (unknown source, not enough samples under ``error``)."""


class MixInput(ConfigModel):
    """One input: a subset ``.npy`` (needs ``source``), a pool, or a parquet table with uid (+source)."""

    path: Path
    source: str | None = None  # every sample of this input belongs to this source
    sources: list[str] | None = None  # keep only these values of a pool's source column


class MixConfig(ConfigModel):
    name: str = "mix"
    inputs: list[MixInput] = Field(default_factory=list)
    weights: dict[str, float] | None = None
    counts: dict[str, int] | None = None
    total: int | None = Field(default=None, ge=0)
    sampling: Sampling = "without_replacement"
    shortfall: Shortfall = "cap"
    overlap: Overlap = "exclude"  # a uid in several sources: drawn by one of them only, or by each
    seed: int = 0

    @model_validator(mode="after")
    def _one_spec(self) -> MixConfig:
        if (self.weights is None) == (self.counts is None):
            raise ValueError("give exactly one of weights (with an optional total) or counts")
        if self.counts is not None and self.total is not None:
            raise ValueError("total goes with weights; with counts the total is their sum")
        weights = list((self.weights or {"": 1.0}).values())
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        if self.counts is not None and any(c < 0 for c in self.counts.values()):
            raise ValueError("counts must be >= 0")
        if self.sampling != "without_replacement" and self.weights is not None and self.total is None:
            raise ValueError(f"sampling {self.sampling} needs a total (nothing bounds it otherwise)")
        return self


# ---------------------------------------------------------------------------------------- candidates


@dataclass
class Candidates:
    """Per source, the distinct sorted uids it can give."""

    by_source: dict[str, np.ndarray] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)  # repeated candidate entries dropped
    inputs: list[dict[str, Any]] = field(default_factory=list)
    _parts: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def available(self) -> dict[str, int]:
        return {s: len(u) for s, u in self.by_source.items()}

    def add(self, source: str, uids: np.ndarray) -> None:
        self._parts.setdefault(source, []).append(uids)

    def finalize(self) -> None:
        """Sort and deduplicate each source (a uid listed twice in a source is one candidate)."""
        for s, parts in self._parts.items():
            merged = np.concatenate([self.by_source.get(s, np.empty(0, UID_DTYPE)), *parts])
            self.by_source[s] = np.unique(merged)
            self.duplicates[s] = self.duplicates.get(s, 0) + len(merged) - len(self.by_source[s])
        self._parts.clear()


def _add_table_input(cands: Candidates, spec: MixInput) -> int:
    """Add a pool's / table's samples shard by shard; returns how many rows it had."""
    rows = RowSource.open(spec.path)
    by_column = spec.source is None
    if by_column and not rows.has_column("source"):
        raise MixError(f"{spec.path}: no 'source' column; name its source with source: NAME")
    n = 0
    for shard in rows.shards():
        t = rows.read_columns(shard, ["uid", "source"] if by_column else ["uid"])
        n += t.num_rows
        uids = hex_column_to_array(t["uid"])
        if not by_column:
            cands.add(str(spec.source), uids)
            continue
        src = t["source"].combine_chunks().cast(pa.string()).dictionary_encode()
        if src.null_count:
            raise MixError(f"{spec.path}: {src.null_count} rows of shard {shard} have a null source")
        codes = src.indices.to_numpy(zero_copy_only=False)
        for code, name in enumerate(src.dictionary.to_pylist()):
            if spec.sources is None or name in spec.sources:
                cands.add(name, uids[codes == code])
    return n


def gather_candidates(inputs: list[MixInput]) -> Candidates:
    """Read every input's uids, grouped by source (vectorised per shard)."""
    cands = Candidates()
    for spec in inputs:
        if spec.path.suffix == ".npy":
            if spec.source is None:
                raise MixError(f"{spec.path}: a subset has no source column; give it source: NAME")
            uids = Subset.load(spec.path).uids
            cands.add(spec.source, uids)
            n = len(uids)
        else:
            n = _add_table_input(cands, spec)
        cands.inputs.append(
            {"path": str(spec.path), "source": spec.source, "sources": spec.sources, "rows": n}
        )
    cands.finalize()
    return cands


# -------------------------------------------------------------------------------------------- plan


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, each within one of ``total * w / sum(w)``.

    The units left after flooring go to the largest fractional parts; ties go to the earlier
    entry (sources are ordered by name), so the result is deterministic.
    """
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    base = np.floor(exact).astype(np.int64)
    left = int(total - base.sum())
    order = np.lexsort((np.arange(len(w)), -(exact - base)))
    base[order[:left]] += 1
    return base


@dataclass
class MixPlan:
    sources: list[str]
    requested_proportion: np.ndarray
    requested: np.ndarray  # counts asked for (before any shortfall)
    available: np.ndarray
    selected: np.ndarray  # counts that will be drawn
    total_requested: int
    notes: list[str] = field(default_factory=list)

    @property
    def shortfall(self) -> np.ndarray:
        return self.requested - self.selected


def _max_total_without_shortfall(p: np.ndarray, available: np.ndarray, upper: int | None) -> int:
    """Largest total whose rounded shares all fit in what is available (proportions kept)."""
    pos = p > 0
    bound = int(np.floor(np.min(available[pos] / p[pos]))) if pos.any() else 0
    total = bound if upper is None else min(upper, bound)
    while total > 0 and (largest_remainder(p, total) > available).any():
        total -= 1
    return total


def plan_mix(cfg: MixConfig, available: Mapping[str, int]) -> MixPlan:
    """How many samples to draw from each source, and what falls short."""
    spec = cfg.weights if cfg.weights is not None else cfg.counts
    assert spec is not None
    unknown = sorted(s for s, w in spec.items() if s not in available and w > 0)
    if unknown:
        raise MixError(
            f"weights/counts name sources {unknown} that are not in the inputs (which have "
            f"{sorted(available)}); a typo would silently change every other share"
        )
    unlisted = sorted(set(available) - set(spec))
    if unlisted:
        raise MixError(
            f"sources {unlisted} are in the inputs but have no weight/count; give them 0 to leave them "
            "out, or keep only some sources of a pool with inputs[].sources"
        )
    sources = sorted(spec)
    avail = np.array([available.get(s, 0) for s in sources], dtype=np.int64)
    w = np.array([spec[s] for s in sources], dtype=np.float64)
    p = w / w.sum() if w.sum() > 0 else w
    replace = cfg.sampling != "without_replacement"
    notes = []
    if cfg.counts is not None:
        requested = w.astype(np.int64)
        total = int(requested.sum())
    elif cfg.total is None:
        total = _max_total_without_shortfall(p, avail, None)
        notes.append(f"no total given: {total} is the largest that every source can give in proportion")
        requested = largest_remainder(p, total)
    else:
        total = cfg.total
        requested = largest_remainder(p, total)
    capacity = np.where(avail > 0, np.iinfo(np.int64).max, 0) if replace else avail
    short = requested > capacity
    selected = requested.copy()
    if short.any():
        detail = ", ".join(
            f"{sources[i]}: asked {requested[i]}, has {avail[i]}" for i in np.flatnonzero(short)
        )
        if cfg.shortfall == "error":
            raise MixError(f"not enough samples ({detail}); use shortfall: cap or shrink, or replacement")
        if cfg.shortfall == "shrink":
            total = _max_total_without_shortfall(p, capacity, total)
            selected = largest_remainder(p, total) if total else np.zeros_like(requested)
            notes.append(f"shortfall ({detail}): total shrunk to {total} to keep the proportions")
        else:
            selected = np.minimum(requested, capacity)
            notes.append(f"shortfall ({detail}): capped, so the proportions differ from those asked")
        for n in notes[-1:]:
            log.warning("%s", n)
    return MixPlan(sources, p, requested, avail, selected, int(requested.sum()), notes)


# -------------------------------------------------------------------------------------------- draw


def source_rng(seed: int, source: str) -> np.random.Generator:
    """A generator per (seed, source): a source's draw does not depend on the other sources."""
    return np.random.default_rng([seed, zlib.crc32(source.encode("utf-8"))])


def draw_indices(rng: np.random.Generator, available: int, k: int, sampling: Sampling) -> np.ndarray:
    """Positions (into a source's sorted candidates) of the ``k`` entries drawn."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if sampling == "without_replacement":
        return np.sort(rng.choice(available, size=k, replace=False))
    if sampling == "with_replacement":
        return np.sort(rng.integers(0, available, size=k))
    full, rest = divmod(k, available)  # "repeat": whole copies, then a sample without replacement
    return np.sort(np.concatenate([np.tile(np.arange(available), full), rng.choice(available, rest, False)]))


@dataclass
class MixResult:
    subset: Subset
    sources: pa.Table  # uid, source, copies (one row per distinct uid and source)
    plan: MixPlan
    stats: StageStats


def _draw_source(
    cfg: MixConfig, plan: MixPlan, i: int, uids: np.ndarray, taken: list[np.ndarray]
) -> tuple[np.ndarray, Counts]:
    """Draw source ``i`` of the plan from its candidates (less those taken under ``overlap: exclude``)."""
    s = plan.sources[i]
    pool = uids
    if cfg.overlap == "exclude" and taken and len(uids):
        pool = uids[~np.isin(uids, np.concatenate(taken))]
    k = int(plan.selected[i])
    if len(pool) < k and (cfg.sampling == "without_replacement" or len(pool) == 0):
        detail = f"{s}: asked {k}, has {len(pool)} after {len(uids) - len(pool)} taken by other sources"
        if cfg.shortfall == "error":
            raise MixError(f"not enough samples ({detail}); use shortfall: cap, or overlap: allow")
        plan.notes.append(f"overlap shortfall ({detail}): capped")
        log.warning("%s", plan.notes[-1])
        k = len(pool)
        plan.selected[i] = k
    idx = draw_indices(source_rng(cfg.seed, s), len(pool), k, cfg.sampling)
    n_distinct = len(np.unique(idx))  # candidate entries drawn at least once
    counts = Counts(seen=len(uids), kept=n_distinct)
    if len(pool) > n_distinct:
        counts.dropped["not_sampled"] = len(pool) - n_distinct
    if len(uids) > len(pool):
        counts.dropped["in_other_source"] = len(uids) - len(pool)
    return pool[idx], counts


def mix(cfg: MixConfig, candidates: Candidates) -> MixResult:
    """Draw the mix from gathered candidates."""
    plan = plan_mix(cfg, candidates.available())
    parts, uid_cols, src_cols, copy_cols, taken = [], [], [], [], []
    stats = StageStats("mix")
    unique = np.zeros(len(plan.sources), dtype=np.int64)
    for i, s in enumerate(plan.sources):
        uids = candidates.by_source.get(s, np.empty(0, UID_DTYPE))
        chosen, counts = _draw_source(cfg, plan, i, uids, taken)
        parts.append(chosen)
        u, c = np.unique(chosen, return_counts=True)
        taken.append(u)
        uid_cols.append(u)
        copy_cols.append(c)
        src_cols.append(np.full(len(u), i, dtype=np.int32))
        unique[i] = len(u)
        stats.by_source[s] = counts
        stats.total.add(counts)
        stats.extra["written"] += len(chosen)
    all_uids = np.concatenate(parts) if parts else np.empty(0, UID_DTYPE)
    distinct = np.concatenate(uid_cols) if uid_cols else np.empty(0, UID_DTYPE)
    n_distinct = len(np.unique(distinct))
    stats.extra["distinct_written"] = n_distinct
    stats.extra["upsampled_copies"] = stats.extra["written"] - n_distinct  # every repeat, any cause
    stats.extra["cross_source_copies"] = len(distinct) - n_distinct  # repeats from drawing 2 sources
    table = pa.table(
        {
            "uid": array_to_hex_column(distinct),
            "source": pa.DictionaryArray.from_arrays(
                pa.array(np.concatenate(src_cols) if src_cols else np.empty(0, np.int32)),
                pa.array(plan.sources, pa.string()),
            ),
            "copies": pa.array(np.concatenate(copy_cols) if copy_cols else np.empty(0, np.int64), pa.int32()),
        }
    )
    manifest = mix_manifest(cfg, candidates, plan, unique, distinct if uid_cols else None, stats)
    return MixResult(Subset(all_uids, manifest), table, plan, stats)


def mix_manifest(
    cfg: MixConfig,
    cands: Candidates,
    plan: MixPlan,
    unique: np.ndarray,
    distinct: np.ndarray | None,
    stats: StageStats | None = None,
) -> dict[str, Any]:
    total = int(plan.selected.sum())
    actual = plan.selected / total if total else np.zeros(len(plan.sources))
    per_source = {
        s: {
            "weight": (cfg.weights or {}).get(s),
            "requested_proportion": round(float(plan.requested_proportion[i]), 6),
            "requested": int(plan.requested[i]),
            "available": int(plan.available[i]),
            "selected": int(plan.selected[i]),
            "unique": int(unique[i]),
            "shortfall": int(plan.shortfall[i]),
            "actual_proportion": round(float(actual[i]), 6),
            "duplicate_candidates": cands.duplicates.get(s, 0),
            "taken_by_other_sources": int(stats.by_source[s].dropped.get("in_other_source", 0))
            if stats is not None and s in stats.by_source
            else 0,
        }
        for i, s in enumerate(plan.sources)
    }
    # the distinct uids of each source, concatenated: a uid present twice was drawn from two sources
    uid_sources = np.unique(distinct, return_counts=True)[1] if distinct is not None else np.zeros(0)
    return {
        "name": cfg.name,
        "operation": "mix",
        "seed": cfg.seed,
        "sampling": cfg.sampling,
        "shortfall_policy": cfg.shortfall,
        "total_requested": plan.total_requested,
        "total_selected": total,
        "total_shortfall": int(plan.shortfall.sum()),
        "max_proportion_error": round(float(np.abs(actual - plan.requested_proportion).max()), 6)
        if total
        else None,
        "sources": per_source,
        "overlap": cfg.overlap,
        "uids_in_several_sources": int((uid_sources > 1).sum()),  # drawn by several (overlap: allow)
        "candidates_in_several_sources": candidates_in_several_sources(cands),
        "uids_written_more_than_once": int(stats.extra["upsampled_copies"]) if stats is not None else 0,
        "notes": plan.notes,
        "inputs": cands.inputs,
        "config": cfg.model_dump(mode="json"),
    }


def candidates_in_several_sources(cands: Candidates) -> int:
    """How many distinct uids are candidates of more than one source (a subset drawn from a pool...)."""
    if not cands.by_source:
        return 0
    _, n = np.unique(np.concatenate(list(cands.by_source.values())), return_counts=True)
    return int((n > 1).sum())


def sources_path(npy_path: Path) -> Path:
    """The sidecar table that keeps each selected uid's source: ``NAME.sources.parquet``."""
    return npy_path.with_suffix(".sources.parquet")


def write_mix(result: MixResult, out: str | Path) -> Path:
    """Write the subset (.npy + manifest) and its uid -> source sidecar; returns the .npy path."""
    out = Path(out)
    if out.suffix != ".npy":
        out = out.with_suffix(".npy")
    result.subset.manifest["stats"] = result.stats.to_dict()
    result.subset.manifest["sources_table"] = sources_path(out).name
    atomic_write_parquet(sources_path(out), result.sources)
    return result.subset.save(out)


def read_sources(npy_path: str | Path) -> pa.Table:
    return pq.read_table(sources_path(Path(npy_path)))


def run_mix(cfg: MixConfig, out: str | Path) -> tuple[Path, MixResult]:
    if not cfg.inputs:
        raise MixError("no inputs to mix")
    result = mix(cfg, gather_candidates(cfg.inputs))
    return write_mix(result, out), result
