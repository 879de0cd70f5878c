"""``curate ablate``: a quality-threshold ablation grid, run cell by cell, resumable.

The experiment of "Scaling (Down) CLIP" (Li, Xie, Cubuk 2024, "Data Quality"): keep the top k% of a
pool by a quality score (the reference CLIP score), train the same preset on each subset, once for
one epoch (samples seen = subset size) and once on an equal samples-seen budget, and compare zero-shot
accuracy with a seeded random subset of the same size (the control that separates "better data"
from "less data"). Supervised models trained on the labelled in-distribution set at several budgets
are the baseline line of effective robustness, against which each curated set's CLIP is placed.

A **set** is a subset of the pool made into training shards once (selected, resharded, cached under
``OUT/sets/<set>/``); a **cell** is one set x budget mode x seed: train then evaluate, under
``OUT/cells/<set>__<mode>__s<seed>/``. A cell is finished when its ``cell.json`` exists (written
after evaluation), so a rerun skips it; a cell that fails writes ``error.json`` and is reported with
status ``failed`` while the others go on (and a rerun retries it).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from curation.core.config import ConfigModel
from curation.core.io import atomic_write_json, read_json
from curation.core.progress import make_progress
from curation.core.stagedef import StageDef, StageFailed, StageResult
from curation.core.subset import Subset
from workflows import ablation_cells as ops

log = logging.getLogger(__name__)

CELL_FILE = "cell.json"  # the finished-cell marker, holding the cell's record
ERROR_FILE = "error.json"
SET_FILE = "set.json"  # the materialised-set marker
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Mode = Literal["one_epoch", "equal_samples"]
Kind = Literal["topk", "random", "named", "baseline"]


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
    preset: str = "tiny"
    preset_overrides: list[str] = Field(default_factory=list)  # key=value, as `curate train --set`
    modes: list[Mode] = Field(default_factory=lambda: ["one_epoch", "equal_samples"])
    samples_seen: int | None = Field(None, ge=1)  # equal_samples budget (default: the preset's)
    seeds: list[int] = Field(default_factory=lambda: [0])
    suite: str = "data/synth/suite"
    eval_config: str | None = None  # default conf/eval/default.yaml
    eval_overrides: list[str] = Field(default_factory=list)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
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


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class SetSpec:
    """One training set: how it is made, and what the results table says about it."""

    name: str
    kind: Kind
    k: float | None = None  # top-k percentage (topk and its random control)
    subset: str | None = None  # a given subset .npy (named sets)
    control_of: str | None = None  # random: the top-k set whose size it matches
    shards: str | None = None  # given training shards (baselines)


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


def expand_sets(cfg: AblationConfig) -> list[SetSpec]:
    """Top-k sets, their random controls, the named sets (baselines are cells of their own)."""
    sets = [SetSpec(topk_name(k), "topk", k=k) for k in cfg.topk]
    if cfg.random_control:
        sets += [SetSpec(f"random{k:g}", "random", k=k, control_of=topk_name(k)) for k in cfg.topk if k < 100]
    sets += [SetSpec(name, "named", subset=path) for name, path in cfg.named_sets.items()]
    clash = {s.name for s in sets if s.kind == "named"} & {s.name for s in sets if s.kind != "named"}
    if clash:
        raise ValueError(f"named sets clash with generated set names: {sorted(clash)}")
    return sets


def expand_cells(cfg: AblationConfig) -> list[Cell]:
    """Every set x mode x seed, then the supervised baselines (one cell per budget x seed)."""
    cells = [
        Cell(s, mode, seed, cfg.samples_seen if mode == "equal_samples" else None)
        for s in expand_sets(cfg)
        for mode in cfg.modes
        for seed in cfg.seeds
    ]
    b = cfg.baselines
    for budget in b.budgets:
        spec = SetSpec(f"supervised{budget}", "baseline", shards=b.shards)
        cells += [Cell(spec, "equal_samples", seed, budget) for seed in b.seeds]
    return cells


# ---------------------------------------------------------------- sets


@dataclass
class SetInfo:
    """A materialised set: where its shards are, how big it is, or why it could not be made."""

    name: str
    shards: str | None = None
    subset: str | None = None
    size: int | None = None
    error: str | None = None


def set_dir(out: Path, name: str) -> Path:
    return out / "sets" / name


def prepare_set(spec: SetSpec, cfg: AblationConfig, out: Path) -> SetInfo:
    """Select (if needed) and reshard one set, once: a ``set.json`` marks it ready for every cell."""
    if spec.kind == "baseline":
        assert spec.shards is not None
        return SetInfo(spec.name, shards=spec.shards)
    root = set_dir(out, spec.name)
    if (root / SET_FILE).exists():
        return SetInfo(**read_json(root / SET_FILE))
    try:
        subset = _select(spec, cfg, out)
        size = len(Subset.load(subset))
        shards = ops.reshard(Path(cfg.pool), subset, root / "shards", cfg.reshard, cfg.workers, cfg.engine)
        info = SetInfo(spec.name, shards=str(shards), subset=str(subset), size=size)
        atomic_write_json(root / SET_FILE, asdict(info))
        log.info("set %s: %d samples -> %s", spec.name, size, shards)
        return info
    except Exception as exc:  # one bad set fails its cells, not the ablation
        log.error("set %s could not be made: %s", spec.name, exc)
        return SetInfo(spec.name, error=f"{type(exc).__name__}: {exc}")


def _select(spec: SetSpec, cfg: AblationConfig, out: Path) -> Path:
    root, pool = set_dir(out, spec.name), Path(cfg.pool)
    if spec.kind == "named":
        assert spec.subset is not None
        if not Path(spec.subset).exists():
            raise FileNotFoundError(f"named set {spec.name}: no subset file {spec.subset}")
        return Path(spec.subset)
    path = root / "subset.npy"
    if path.exists():
        return path
    if spec.kind == "topk":
        assert spec.k is not None
        return ops.select_topk(pool, cfg.score, spec.k / 100, cfg.within, path, cfg.workers, cfg.engine)
    assert spec.control_of is not None
    target = set_dir(out, spec.control_of) / "subset.npy"
    if not target.exists():
        raise FileNotFoundError(
            f"{spec.name}: the top-k set it controls for ({spec.control_of}) was not made"
        )
    return ops.select_random(pool, target, cfg.random_seed, cfg.within, path, cfg.workers, cfg.engine)


def prepare_sets(cells: list[Cell], cfg: AblationConfig, out: Path) -> dict[str, SetInfo]:
    """Top-k sets first (random controls take their sizes), in grid order; sequential, shard-parallel."""
    specs = {c.set.name: c.set for c in cells}
    order = sorted(specs.values(), key=lambda s: s.kind == "random")
    infos: dict[str, SetInfo] = {}
    with make_progress() as progress:
        task = progress.add_task("sets", total=len(order))
        for spec in order:
            progress.update(task, description=f"set {spec.name}")
            infos[spec.name] = prepare_set(spec, cfg, out)
            progress.advance(task)
    return infos


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class CellJob:
    """Everything a worker process needs to run one cell (picklable)."""

    cell: Cell
    shards: str | None
    set_size: int | None
    set_error: str | None
    cell_dir: Path
    preset: str
    preset_overrides: tuple[str, ...]
    suite: str
    eval_config: str | None
    eval_overrides: tuple[str, ...]
    device: str
    classnames: str | None = None


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


def _record(job: CellJob, status: str, **values: Any) -> CellRecord:
    c = job.cell
    values.setdefault("subset_size", job.set_size)
    return CellRecord(c.id, c.set.name, c.set.kind, c.set.k, c.mode, c.seed, status, **values)


def run_cell(job: CellJob) -> CellRecord:
    """Train then evaluate one cell; never raises: a failure is a record with its error."""
    start = time.perf_counter()
    marker = job.cell_dir / CELL_FILE
    if marker.exists():
        rec = CellRecord(**read_json(marker))
        rec.reused = True
        rec.run_dir, rec.eval_dir = (
            str(job.cell_dir / "run"),
            str(job.cell_dir / "eval"),
        )  # OUT may have moved
        return rec
    try:
        if job.set_error is not None:
            raise RuntimeError(f"set {job.cell.set.name} could not be made: {job.set_error}")
        assert job.shards is not None
        run_dir, eval_dir = job.cell_dir / "run", job.cell_dir / "eval"
        baseline = job.cell.set.kind == "baseline"
        info = ops.train(
            Path(job.shards),
            run_dir,
            job.preset,
            job.preset_overrides,
            job.cell.mode,
            job.cell.samples_seen,
            job.cell.seed,
            job.device,
            supervised=baseline,
            classnames=Path(job.classnames) if baseline and job.classnames else None,
        )
        trained = time.perf_counter()
        records = ops.evaluate(
            run_dir, job.cell.id, Path(job.suite), _opt_path(job.eval_config), job.eval_overrides, eval_dir
        )
        done = time.perf_counter()
        rec = _record(
            job,
            "finished",
            subset_size=job.set_size if job.set_size is not None else info.get("data_samples"),
            samples_seen=info.get("samples_seen"),
            wall_s=round(done - start, 3),
            train_s=round(trained - start, 3),
            eval_s=round(done - trained, 3),
            run_dir=str(run_dir),
            eval_dir=str(eval_dir),
            records=records,
        )
        atomic_write_json(marker, asdict(rec))
        (job.cell_dir / ERROR_FILE).unlink(missing_ok=True)
        return rec
    except Exception as exc:  # one failed cell is a row of the table, not the end of the ablation
        error = f"{type(exc).__name__}: {exc}"
        job.cell_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(job.cell_dir / ERROR_FILE, {"error": error, "traceback": traceback.format_exc()})
        return _record(job, "failed", wall_s=round(time.perf_counter() - start, 3), error=error)


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cell_jobs(cells: list[Cell], sets: dict[str, SetInfo], cfg: AblationConfig, out: Path) -> list[CellJob]:
    jobs = []
    for c in cells:
        info = sets[c.set.name]
        jobs.append(
            CellJob(
                cell=c,
                shards=info.shards,
                set_size=info.size,
                set_error=info.error,
                cell_dir=out / "cells" / c.id,
                preset=cfg.preset,
                preset_overrides=tuple(cfg.preset_overrides),
                suite=cfg.suite,
                eval_config=cfg.eval_config,
                eval_overrides=tuple(cfg.eval_overrides),
                device=cfg.device,
                classnames=cfg.baselines.classnames,
            )
        )
    return jobs


def _cap_threads(threads: int) -> None:
    """Cell workers share the cores: without a cap each trainer starts one OpenMP thread per core, and
    on a small machine the oversubscribed threads make every cell slower than running them in turn."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def run_cells(jobs: list[CellJob], parallel: int) -> list[CellRecord]:
    """Run the cells (in a spawn process pool when ``parallel`` > 1), in grid order in the result."""
    results: dict[str, CellRecord] = {}
    with make_progress() as progress:
        task = progress.add_task("cells", total=len(jobs))

        def done(rec: CellRecord) -> None:
            results[rec.id] = rec
            took = f"{rec.wall_s:.1f} s" if rec.wall_s is not None else "-"
            if rec.status == "failed":
                log.error("cell %s failed after %s: %s", rec.id, took, rec.error)
            elif rec.reused:
                log.info("cell %s: finished earlier, skipped", rec.id)
            else:
                log.info(
                    "cell %s finished in %s (train %.1f s, eval %.1f s)",
                    rec.id,
                    took,
                    rec.train_s,
                    rec.eval_s,
                )
            progress.advance(task)

        if parallel <= 1:
            for job in jobs:
                progress.update(task, description=f"cell {job.cell.id}")
                done(run_cell(job))
        else:
            threads = max(1, (os.cpu_count() or 1) // parallel)
            ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
            with cf.ProcessPoolExecutor(parallel, ctx, _cap_threads, (threads,)) as pool:
                futures = {pool.submit(run_cell, job): job for job in jobs}
                for fut in cf.as_completed(futures):
                    try:
                        done(fut.result())
                    except Exception as exc:  # a worker that died (killed, out of memory): a failed cell
                        error = f"worker process failed: {type(exc).__name__}: {exc}"
                        done(_record(futures[fut], "failed", error=error))
    return [results[j.cell.id] for j in jobs]


# ---------------------------------------------------------------- the whole ablation


@dataclass
class AblationResult:
    out: Path
    cells: list[CellRecord]
    sets: dict[str, SetInfo]

    @property
    def failed(self) -> list[CellRecord]:
        return [c for c in self.cells if c.status == "failed"]


def run_ablation(cfg: AblationConfig, out: Path, report: bool = True) -> AblationResult:
    """Make the sets, run every cell, then write results.csv/.json and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    cells = expand_cells(cfg)
    log.info("ablation %s: %d cells -> %s", cfg.name, len(cells), out)
    sets = prepare_sets(cells, cfg, out)
    records = run_cells(cell_jobs(cells, sets, cfg, out), cfg.parallel_cells)
    result = AblationResult(out, records, sets)
    if report:
        from workflows.ablation_report import write_outputs

        write_outputs(result, cfg)
    return result


class AblateInputs(ConfigModel):
    out: Path = Path("ablation")


def run_ablate(inputs: AblateInputs, cfg: AblationConfig, engine: Any = None) -> StageResult:
    """The ablation grid (select, reshard, train, evaluate, report); its cells resume on a rerun."""
    result = run_ablation(cfg, inputs.out)
    if result.failed:
        failed = "; ".join(f"{c.id} ({c.error})" for c in result.failed[:5])
        raise StageFailed(f"ablation: {len(result.failed)} of {len(result.cells)} cell(s) failed: {failed}")
    return StageResult({"cells": len(result.cells), "report": str(inputs.out / "report.html")})


STAGE = StageDef("ablate", AblateInputs, run_ablate, AblationConfig, "ablation/default.yaml")
