"""The ``score`` stage: image-text similarity of every pair of a pool under a reference CLIP."""

from __future__ import annotations

from pathlib import Path

from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.engines import Engine
from curation.scoring.config import ScoreConfig


class ScoreInputs(ConfigModel):
    pool: Path = Path("pool")


def run_score(inputs: ScoreInputs, cfg: ScoreConfig, engine: Engine) -> StageResult:
    from curation.scoring import score_pool

    return StageResult.from_reports(score_pool(inputs.pool, cfg, engine))


STAGE = StageDef("score", ScoreInputs, run_score, ScoreConfig, "score/default.yaml")
