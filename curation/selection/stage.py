"""The ``select`` stage: a subset (DataComp .npy + manifest + funnel) from scores, verdicts and set ops."""

from __future__ import annotations

from pydantic import Field

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.engines import Engine
from curation.selection.run import SelectSpec


class SelectInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")
    out: storage.Location = Field(
        description="Subset .npy to write, a path or a URL (manifest .json and funnel beside it)."
    )
    keep_work: bool = Field(False, description="Keep gathered columns and DuckDB spill files.")


def run_select(inputs: SelectInputs, spec: SelectSpec, engine: Engine) -> StageResult:
    from curation.selection.run import clean_work_dir, run_selection, save_selection

    out = inputs.out.with_suffix(".npy")
    work = out.parent / f".{out.stem}.select-work"  # beside the output: on object storage too
    result = run_selection(inputs.pool, spec, work_dir=work, engine=engine)
    path = save_selection(result, out)
    if not inputs.keep_work:
        clean_work_dir(work)
    summary = {
        "subset": storage.url(path),
        "uids": len(result.subset),
        "distinct": result.subset.unique_count(),
        "decisions": result.decisions,
        "funnel": result.funnel.to_dict(),
    }
    return StageResult(summary)


STAGE = StageDef("select", SelectInputs, run_select, SelectSpec)
