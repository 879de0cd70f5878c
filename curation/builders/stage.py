"""The ``hardmatch`` stage: captions labelled with the one class they name (the YFCC-hardmatch recipe)."""

from __future__ import annotations

from curation.builders.hardmatch import HardmatchConfig
from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.engines import Engine


class HardmatchInputs(ConfigModel):
    input: storage.Location = storage.location("pool")
    out: storage.Location = storage.location("sets/hardmatch")
    ground_truth: storage.Location | None = None
    overwrite: bool = False


def run_hardmatch_stage(inputs: HardmatchInputs, cfg: HardmatchConfig, engine: Engine) -> StageResult:
    from curation.builders.hardmatch import run_hardmatch

    report, _ = run_hardmatch(
        inputs.input, cfg, inputs.out, engine, ground_truth=inputs.ground_truth, overwrite=inputs.overwrite
    )
    return StageResult.from_reports(report, subset=str(inputs.out / "hardmatch.npy"))


STAGE = StageDef(
    "hardmatch", HardmatchInputs, run_hardmatch_stage, HardmatchConfig, "hardmatch/imagenet.yaml"
)
