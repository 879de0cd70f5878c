"""The ``reshard`` stage: a subset's samples written into fresh webdataset shards for training."""

from __future__ import annotations

from pydantic import Field

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageFailed, StageResult
from curation.engines import Engine
from curation.reshard.run import ReshardConfig


class ReshardInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")
    subset: storage.Location = Field(description="Subset .npy (DataComp format).")
    out: storage.Location = Field(description="Output directory for NNNNN.tar, sizes.json, stats.json.")
    labels: storage.Location | None = Field(None, description="Label table (uid, label) for KEY.cls.")
    overwrite: bool = False


def run_reshard_stage(inputs: ReshardInputs, cfg: ReshardConfig, engine: Engine) -> StageResult:
    from curation.reshard.run import run_reshard

    result = run_reshard(
        inputs.pool, inputs.subset, inputs.out, cfg, inputs.labels, engine=engine, overwrite=inputs.overwrite
    )
    summary = {"out": str(result.out), "shards": result.plan["shards"], "stats": result.plan["stats"]}
    done = StageResult(summary, result.reports).check("reshard")
    if not result.complete:
        raise StageFailed(f"reshard into {result.out} did not finish; rerun to resume")
    return done


STAGE = StageDef("reshard", ReshardInputs, run_reshard_stage, ReshardConfig)
