"""``curate select``: turn scores and verdicts into a subset, exactly and out of core.

A selection spec is a chain of steps (see :mod:`curation.selection.steps` for the kinds): filter verdicts,
thresholds, exact top-k by any score, seeded random controls, external subsets, and set operations.
Running it is the "global selection" of the design: gather the needed columns (straight from the
pool parquet, or per shard from attribute tables), fix each global cut with a few DuckDB scans and
deterministic uid tie-breaking, then stream out the kept uids. Nothing holds a score column in
Python memory; only the output subset (16 bytes per kept sample) is materialised.

The result is a DataComp-format subset plus a manifest saying how it was made, and a funnel of
stage stats (one stage per top-level step) in which every pool sample is kept or dropped with a
reason, overall and per source.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curation.core import storage
from curation.core.config import ConfigError, ConfigModel
from curation.core.io import atomic_write_json
from curation.core.pool import Pool
from curation.core.provenance import git_commit
from curation.core.stats import Counts, Funnel, StageStats
from curation.core.subset import Subset
from curation.core.uid import UID_DTYPE
from curation.core.uidvec import hex_to_uids, sort_uids
from curation.engines import Engine, run_job
from curation.selection.frame import (
    ColumnRef,
    DuckDBConfig,
    Frame,
    SelectionError,
    build_frame,
    connect,
    local_parquet,
    pool_frame_columns,
    uid_column_complete,
)
from curation.selection.gather import GatherJob
from curation.selection.steps import Compiled, Step, gate, parse_step

log = logging.getLogger(__name__)

OUTPUT_BATCH = 1 << 20
UNIQUE_LABEL = "unique_uid"


class SelectSpec(ConfigModel):
    """A selection: a name, a chain of steps, DuckDB resources."""

    name: str = "selection"
    description: str = ""
    steps: list[dict[str, Any]]
    duckdb: DuckDBConfig = DuckDBConfig()


@dataclass
class SelectionResult:
    subset: Subset
    funnel: Funnel
    decisions: list[dict[str, Any]] = field(default_factory=list)


def parse_steps(spec: SelectSpec) -> list[Step]:
    if not spec.steps:
        raise ConfigError("select: `steps` is empty; give at least one step (e.g. `- all: {}`)")
    return [parse_step(s, f"steps[{i}]") for i, s in enumerate(spec.steps)]


def run_selection(
    pool_root: str | Path,
    spec: SelectSpec,
    work_dir: str | Path | None = None,
    engine: Engine | str = "local",
    workers: int = 1,
) -> SelectionResult:
    """Evaluate ``spec`` on the pool (a path or a URL); ``work_dir`` (a path or a URL) holds gathered
    columns, and DuckDB's spill files where it is local.

    DuckDB reads local files only (its ``httpfs`` extension cannot be installed offline), so with a
    remote pool or work dir the parquet it scans is copied to a local scratch folder first: the few
    pool columns the steps need, or the (narrow) gathered shards.
    """
    steps = parse_steps(spec)
    pool = Pool(storage.location(pool_root))
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="curate-select-")))
        else:
            work = storage.location(work_dir)
            scratch = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="curate-select-")))
                if storage.is_remote(work)
                else work
            )
        return _run(pool, spec, steps, work, scratch, engine, workers)


def _run(
    pool: Pool,
    spec: SelectSpec,
    steps: list[Step],
    work: Path,
    scratch: Path,
    engine: Engine | str,
    workers: int,
    unique: bool = False,
) -> SelectionResult:
    """Evaluate the steps; with ``unique``, first drop every pool row of a uid but its first.

    ``work`` (maybe a URL) holds the gathered shards; ``scratch`` is local (DuckDB's spill files and
    the local copies it scans). Pools rarely list a uid twice, so that costly window runs only when
    the subset came out with a uid from two rows (which would silently upsample it): the selection
    then runs again with it.
    """
    start = time.perf_counter()
    storage.ensure_dir(work)
    scratch.mkdir(parents=True, exist_ok=True)
    for s in steps:
        s.bind(pool)
    for s in steps:
        s.prepare(pool, lambda job: run_job(job, engine, workers=workers))
    refs = [c for s in steps for c in s.columns()]
    subsets = [p for s in steps for p in s.subsets()]
    con = connect(spec.duckdb, scratch)
    try:
        files, gathered = _frame_files(con, pool, refs, work / "gather", scratch, engine, workers)
        frame = build_frame(con, refs, subsets, files, gathered)
        decisions: list[dict[str, Any]] = []
        stages = [Compiled(frame.add("CAST(1 AS BIGINT)", "m"), frame.add("CAST(NULL AS VARCHAR)", "r"))]
        if unique:
            stages.append(_first_row_per_uid(frame, stages[0]))
        for s in steps:
            stages.append(s.compile(frame, stages[-1], decisions))
        labels = _unique_labels([UNIQUE_LABEL] * unique + [s.label for s in steps])
        funnel = _funnel(frame, stages, labels)
        uids, invalid, repeated_rows = _fetch_uids(frame, stages[-1], funnel)
        if repeated_rows and not unique:
            log.warning("the pool lists some selected uids in several rows; dropping all but the first row")
            con.close()  # before the second pass opens its own (closing twice is harmless)
            return _run(pool, spec, steps, work, scratch, engine, workers, unique=True)
        if invalid:
            funnel.stages.append(invalid)
        funnel.check()
        _record_kept(decisions, funnel)
        manifest = _manifest(spec, pool, frame, funnel, decisions, gathered)
        manifest["seconds"] = round(time.perf_counter() - start, 3)
        return SelectionResult(Subset(uids, manifest), funnel, decisions)
    finally:
        con.close()


def _record_kept(decisions: list[dict[str, Any]], funnel: Funnel) -> None:
    """Each top-level step's decision gets the rows its stage kept: a cut's ``k`` is a rank (DataComp's
    threshold index, or the target before ties), not what was written."""
    kept = {stage.stage: stage.total.kept for stage in funnel.stages}
    for d in decisions:
        if f"select:{d.get('step')}" in kept:
            d["kept"] = kept[f"select:{d['step']}"]


def _manifest(
    spec: SelectSpec,
    pool: Pool,
    frame: Frame,
    funnel: Funnel,
    decisions: list[dict[str, Any]],
    gathered: bool,
) -> dict[str, Any]:
    """How the subset was made: the spec, the pool, every cut, the funnel and the source mix."""
    return {
        "name": spec.name,
        "description": spec.description,
        "how": "curate select",
        "pool": storage.url(pool.root) if storage.is_remote(pool.root) else str(pool.root.resolve()),
        "spec": spec.model_dump(mode="json"),
        "frame": "gathered attribute tables" if gathered else "pool parquet",
        "decisions": decisions,
        "selected_rows": funnel.stages[-1].total.kept,
        "source_mix": _source_mix(funnel),
        "seeds": [d["seed"] for d in decisions if "seed" in d],
        "funnel": funnel.to_dict(),
        "duckdb_scans": frame.scans,
        "code_commit": git_commit(),
    }


def _frame_files(
    con: duckdb.DuckDBPyConnection,
    pool: Pool,
    refs: list[ColumnRef],
    work: Path,
    scratch: Path,
    engine: Engine | str,
    workers: int,
) -> tuple[list[str], bool]:
    """The local parquet files the frame scans, and whether they are gathered shards (else the pool
    parquet itself, which alone serves when it has every column the steps need and every uid)."""
    if all(r.stage is None for r in refs):
        paths = [pool.parquet_path(s) for s in pool.shard_ids()]
        files = local_parquet(paths, scratch / "pool_columns", pool_frame_columns(refs))
        if uid_column_complete(con, files):
            return files, False
    job = GatherJob(pool, refs, work)
    job.prepare()
    report = run_job(job, engine, workers=workers)
    if report.failed:
        failed = ", ".join(f"{o.shard} ({o.error})" for o in report.failed[:5])
        raise SelectionError(
            f"gathering columns failed on {len(report.failed)} shard(s): {failed}; rerun to resume"
        )
    return local_parquet(job.files(), scratch / "gathered"), True


def _unique_labels(labels: list[str]) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _funnel(frame: Frame, stages: list[Compiled], labels: list[str]) -> Funnel:
    """One stage per top-level step, from a single GROUP BY over (source, first failing step, reason)."""
    drop_at = " ".join(f"WHEN {c.m} = 0 THEN {i}" for i, c in enumerate(stages[1:], start=1))
    last = stages[-1]
    rows = frame.query(
        f"SELECT source, CASE {drop_at} ELSE 0 END AS drop_at, {last.r} AS reason, count(*) AS n, "
        f"sum({last.m}) AS copies FROM ({frame.sql()}) GROUP BY ALL"
    )
    out = [StageStats(f"select:{label}") for label in labels]
    for source, at, reason, n, copies in rows:
        for i, stage in enumerate(out, start=1):
            if at and at < i:
                break
            counts = stage.by_source.setdefault(str(source), Counts())
            dropped = at == i
            for c in (stage.total, counts):
                c.seen += n
                c.kept += 0 if dropped else n
                if dropped:
                    c.dropped[str(reason)] += n
        if not at:
            out[-1].extra["copies"] += int(copies or 0)
            out[-1].extra[f"copies_{source}"] += int(copies or 0)
    return Funnel(out)


def _first_row_per_uid(frame: Frame, within: Compiled) -> Compiled:
    """Keep the first row (by file and row number) of each uid; the others are ``duplicate_uid``."""
    first = "row_number() OVER (PARTITION BY lower(uid) ORDER BY _file, file_row_number) = 1"
    return gate(frame, within, frame.add(first, "u"), "'duplicate_uid'")


def _fetch_uids(frame: Frame, last: Compiled, funnel: Funnel) -> tuple[np.ndarray, StageStats | None, bool]:
    """Stream the kept uids (repeated by multiplicity) into one sorted ``u8,u8`` array.

    Also says whether two kept rows share a uid (told apart from one row's upsampling copies). One
    entry per kept row is kept apart only once some row has several copies; until then the output
    itself is that list. The output is sorted in place: at 3e7 kept rows the peak is the output
    plus half of it, not three times it (bench/select_topk.py).
    """
    copies = int(funnel.stages[-1].extra.get("copies", 0))
    out = np.empty(copies, dtype=UID_DTYPE)
    rows: np.ndarray | None = None  # one entry per kept row, once some row has several copies
    n_rows = 0
    filled = 0
    bad: list[str] = []
    sql = f"SELECT uid, {last.m} AS m FROM ({frame.sql()}) WHERE {last.m} > 0"
    for batch in frame.stream(sql, OUTPUT_BATCH):
        uids, valid = hex_to_uids(batch.column(0))
        mult = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
        if not valid.all():
            bad += [str(u) for u in pa.array(batch.column(0)).filter(pa.array(~valid)).to_pylist()]
            uids, mult = uids[valid], mult[valid]
        upsampled = bool((mult != 1).any())
        if upsampled and rows is None:
            rows = np.empty(copies, dtype=UID_DTYPE)
            rows[:filled] = out[:filled]  # so far one copy per row: the output is the row list
        rep = np.repeat(uids, mult) if upsampled else uids
        out[filled : filled + len(rep)] = rep
        filled += len(rep)
        if rows is not None:
            rows[n_rows : n_rows + len(uids)] = uids
        n_rows += len(uids)
    out = sort_uids(out[:filled], inplace=True)
    row_uids = out if rows is None else sort_uids(rows[:n_rows], inplace=True)
    repeated = bool(n_rows > 1 and _has_adjacent_equal(row_uids))
    return out, _invalid_stage(frame, last, funnel, bad) if bad else None, repeated


def _has_adjacent_equal(sorted_uids: np.ndarray) -> bool:
    hi, lo = sorted_uids["f0"], sorted_uids["f1"]
    return bool(((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])).any())


def _invalid_stage(frame: Frame, last: Compiled, funnel: Funnel, bad: list[str]) -> StageStats:
    """Kept rows whose uid is not 32 hex characters cannot go into a subset: a counted final drop."""
    log.warning("%d selected rows have malformed uids (e.g. %r); dropped as invalid_uid", len(bad), bad[:3])
    values = ", ".join("'" + u.replace("'", "''") + "'" for u in sorted(set(bad)))
    rows = frame.query(
        f"SELECT source, count(*) FROM ({frame.sql()}) WHERE {last.m} > 0 AND uid IN ({values}) GROUP BY ALL"
    )
    bad_by_source = {str(s): int(n) for s, n in rows}
    prev = funnel.stages[-1]
    stage = StageStats("select:valid_uid")
    for src, c in prev.by_source.items():
        dropped = bad_by_source.get(src, 0)
        stage.by_source[src] = Counts(
            c.kept, c.kept - dropped, Counter({"invalid_uid": dropped} if dropped else {})
        )
    n_bad = sum(bad_by_source.values())
    stage.total = Counts(prev.total.kept, prev.total.kept - n_bad, Counter({"invalid_uid": n_bad}))
    return stage


def _source_mix(funnel: Funnel) -> dict[str, dict[str, int]]:
    """Per source: pool samples, selected rows, and copies (rows x multiplicity) in the subset."""
    first, last = funnel.stages[0], funnel.stages[-1]
    copies = funnel.stages[-1].extra if last.stage != "select:valid_uid" else funnel.stages[-2].extra
    return {
        src: {
            "pool_rows": first.by_source[src].seen,
            "rows": c.kept,
            "copies": int(copies.get(f"copies_{src}", 0)),
        }
        for src, c in sorted(last.by_source.items())
    }


def save_selection(result: SelectionResult, out: str | Path) -> Path:
    """Write ``OUT.npy`` (DataComp format), its manifest ``OUT.json`` and the funnel ``OUT.stats.json``
    (``out`` a path or a URL; each file written whole)."""
    path = result.subset.save(out)
    atomic_write_json(path.with_suffix(".stats.json"), result.funnel.to_dict())
    return path


def clean_work_dir(work: str | Path) -> None:
    """Delete a selection's work dir (local or remote); nothing there is not an error."""
    storage.remove(work, recursive=True)
