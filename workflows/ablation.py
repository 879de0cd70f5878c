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

``OUT`` may be a URL (``s3://bucket/ablation``): a set is selected and resharded in a local temp
folder and uploaded whole before its ``set.json``; a cell trains and evaluates with its run and
evaluation folders at the URL (the trainer mirrors its run there, ``run.json`` last), then writes
``cell.json``; results and the report are single objects. The markers are written last, so a rerun
trusts exactly what finished.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from upath import UPath

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.io import atomic_write_json, read_json
from curation.core.progress import make_progress
from curation.core.stagedef import StageDef, StageFailed, StageResult
from curation.core.subset import Subset
from curation.engines import Engine, open_engine
from workflows import ablation_cells as ops
from workflows.ablation_report import write_outputs
from workflows.ablation_spec import (
    CELL_FILE,
    ERROR_FILE,
    SET_FILE,
    AblationConfig,
    AblationResult,
    BaselineConfig,
    Cell,
    CellRecord,
    SetInfo,
    SetSpec,
    expand_cells,
    expand_sets,
    topk_name,
)

__all__ = [  # the grid's types live in workflows.ablation_spec; importers of this module find them here too
    "CELL_FILE",
    "ERROR_FILE",
    "SET_FILE",
    "AblationConfig",
    "AblationResult",
    "BaselineConfig",
    "Cell",
    "CellJob",
    "CellRecord",
    "SetInfo",
    "SetSpec",
    "expand_cells",
    "expand_sets",
    "prepare_set",
    "prepare_sets",
    "run_ablation",
    "run_cell",
    "run_cells",
    "topk_name",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- sets


Out = Path | UPath  # the ablation's output folder: a local path or a URL


def set_dir(out: Out, name: str) -> Out:
    return out / "sets" / name


@contextlib.contextmanager
def _set_workdir(root: Out) -> Iterator[Path]:
    """Where a set is made: ``root`` itself, or for a URL a local temp folder uploaded to it whole
    when the block succeeds (selection and resharding write to a file system)."""
    if not storage.is_remote(root):
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix="curation-set-") as tmp:
        work = Path(tmp) / root.name
        work.mkdir()
        yield work
        storage.upload_dir(work, root)


def _uploaded(path: Any, work: Path, root: Out) -> Any:
    """Where ``path`` (made in ``work``) is once ``work`` is uploaded to ``root`` (a URL)."""
    if not storage.is_remote(root) or storage.is_remote(path) or not Path(path).is_relative_to(work):
        return path
    return root / Path(path).relative_to(work).as_posix()


def prepare_set(spec: SetSpec, cfg: AblationConfig, out: Out, engine: Engine | str = "local") -> SetInfo:
    """Select (if needed) and reshard one set, once: a ``set.json`` marks it ready for every cell."""
    if spec.kind == "baseline":
        assert spec.shards is not None
        return SetInfo(spec.name, shards=spec.shards)
    root = set_dir(out, spec.name)
    if (root / SET_FILE).exists():
        return SetInfo(**read_json(root / SET_FILE))
    try:
        with _set_workdir(root) as work:
            made = _select(spec, cfg, out, engine, work)
            size = len(Subset.load(made))
            ops.reshard(storage.location(cfg.pool), made, work / "shards", cfg.reshard, engine)
        subset, shards = _uploaded(made, work, root), root / "shards"
        info = SetInfo(spec.name, shards=str(shards), subset=str(subset), size=size)
        atomic_write_json(root / SET_FILE, asdict(info))
        log.info("set %s: %d samples -> %s", spec.name, size, shards)
        return info
    except Exception as exc:  # one bad set fails its cells, not the ablation
        log.error("set %s could not be made: %s", spec.name, exc)
        return SetInfo(spec.name, error=f"{type(exc).__name__}: {exc}")


def _select(spec: SetSpec, cfg: AblationConfig, out: Out, engine: Engine | str, work: Path) -> Any:
    """The set's subset: a named set's own file, else selected into ``work`` (the set's folder, or
    the local folder it is made in when OUT is a URL)."""
    root, pool = set_dir(out, spec.name), storage.location(cfg.pool)
    if spec.kind == "named":
        assert spec.subset is not None
        if not storage.location(spec.subset).exists():
            raise FileNotFoundError(f"named set {spec.name}: no subset file {spec.subset}")
        return storage.location(spec.subset)
    path = work / "subset.npy"
    if (root / "subset.npy").exists():  # selected by an earlier run whose resharding did not finish
        _fetch(root / "subset.npy", path)
        return path
    if spec.kind == "mix":
        seed = cfg.mix.seed if cfg.mix is not None else 0
        return ops.select_mix(pool, cfg.within, spec.clean, spec.noisy, spec.share, seed, path, engine)
    if spec.kind == "topk":
        assert spec.k is not None
        return ops.select_topk(pool, cfg.score, spec.k / 100, cfg.within, path, engine)
    assert spec.control_of is not None
    # a named set's control matches its given file; a top-k set's, the subset selected here
    target = storage.location(spec.subset) if spec.subset else set_dir(out, spec.control_of) / "subset.npy"
    if not target.exists():
        raise FileNotFoundError(
            f"{spec.name}: the set it controls for ({spec.control_of}) was not made: no {target}"
        )
    if storage.is_remote(target):  # selection reads the size from a local file
        local = work.parent / spec.control_of / "subset.npy"
        _fetch(target, local)
        target = local
    return ops.select_random(pool, target, cfg.random_seed, cfg.within, path, engine)


def _fetch(loc: Out, path: Path) -> None:
    """A local copy of ``loc`` at ``path`` (nothing to do when it is that file already)."""
    if not storage.is_remote(loc):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.local_copy(loc) as tmp:
        shutil.move(tmp, path)


def prepare_sets(
    cells: list[Cell], cfg: AblationConfig, out: Out, engine: Engine | str = "local"
) -> dict[str, SetInfo]:
    """Top-k sets first (random controls take their sizes), in grid order; sequential, shard-parallel."""
    specs = {c.set.name: c.set for c in cells}
    order = sorted(specs.values(), key=lambda s: s.kind == "random")
    infos: dict[str, SetInfo] = {}
    with make_progress() as progress:
        task = progress.add_task("sets", total=len(order))
        for spec in order:
            progress.update(task, description=f"set {spec.name}")
            infos[spec.name] = prepare_set(spec, cfg, out, engine)
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
    cell_dir: Path | UPath  # a local folder or a URL
    preset: str
    preset_overrides: tuple[str, ...]
    suite: str
    eval_config: str | None
    eval_overrides: tuple[str, ...]
    device: str
    classnames: str | None = None


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
            storage.location(job.shards),
            run_dir,
            job.preset,
            job.preset_overrides,
            job.cell.mode,
            job.cell.samples_seen,
            job.cell.seed,
            job.device,
            supervised=baseline,
            classnames=storage.location(job.classnames) if baseline and job.classnames else None,
        )
        trained = time.perf_counter()
        records = ops.evaluate(
            run_dir, job.cell.id, job.suite, _opt_path(job.eval_config), job.eval_overrides, eval_dir
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
        storage.remove(job.cell_dir / ERROR_FILE)
        return rec
    except Exception as exc:  # one failed cell is a row of the table, not the end of the ablation
        error = f"{type(exc).__name__}: {exc}"
        storage.ensure_dir(job.cell_dir)
        atomic_write_json(job.cell_dir / ERROR_FILE, {"error": error, "traceback": traceback.format_exc()})
        return _record(job, "failed", wall_s=round(time.perf_counter() - start, 3), error=error)


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cell_jobs(cells: list[Cell], sets: dict[str, SetInfo], cfg: AblationConfig, out: Out) -> list[CellJob]:
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


def run_ablation(
    cfg: AblationConfig, out: str | Out, report: bool = True, engine: Engine | None = None
) -> AblationResult:
    """Make the sets, run every cell, then write results.csv/.json and report.html.

    The sets' selection and resharding run on ``engine`` (a job's engine), else on the config's
    ``engine`` with ``workers``; training cells run ``parallel_cells`` at a time in this machine.
    ``out`` may be a URL.
    """
    out = storage.location(out)
    if storage.is_remote(out):
        storage.check_bucket(out, write=True)
    storage.ensure_dir(out)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    cells = expand_cells(cfg)
    log.info("ablation %s: %d cells -> %s", cfg.name, len(cells), out)
    if engine is None:
        with open_engine(cfg.engine, cfg.workers) as own:
            sets = prepare_sets(cells, cfg, out, own)
    else:
        sets = prepare_sets(cells, cfg, out, engine)
    records = run_cells(cell_jobs(cells, sets, cfg, out), cfg.parallel_cells)
    result = AblationResult(out, records, sets)
    if report:
        write_outputs(result, cfg)
    return result


class AblateInputs(ConfigModel):
    out: storage.Location = Field(storage.location("ablation"), description="Output folder or URL.")


def run_ablate(inputs: AblateInputs, cfg: AblationConfig, engine: Engine | None = None) -> StageResult:
    """The ablation grid (select, reshard, train, evaluate, report); its cells resume on a rerun."""
    result = run_ablation(cfg, inputs.out, engine=engine)
    if result.failed:
        failed = "; ".join(f"{c.id} ({c.error})" for c in result.failed[:5])
        raise StageFailed(f"ablation: {len(result.failed)} of {len(result.cells)} cell(s) failed: {failed}")
    return StageResult({"cells": len(result.cells), "report": str(inputs.out / "report.html")})


STAGE = StageDef("ablate", AblateInputs, run_ablate, AblationConfig, "ablation/default.yaml")
