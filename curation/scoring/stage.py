"""The ``score`` stage: image-text similarity of every pair of a pool under a reference CLIP."""

from __future__ import annotations

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.engines import Engine
from curation.scoring.config import ScoreConfig
from curation.scoring.head_job import ScoreHeadConfig, TrainHeadConfig


class ScoreInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")


def run_score(inputs: ScoreInputs, cfg: ScoreConfig, engine: Engine) -> StageResult:
    from curation.scoring import score_pool

    return StageResult.from_reports(score_pool(inputs.pool, cfg, engine))


STAGE = StageDef("score", ScoreInputs, run_score, ScoreConfig, "score/default.yaml")


class TrainHeadInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")
    out: storage.Location = storage.location("heads/quality.pt")


def run_train_head(inputs: TrainHeadInputs, cfg: TrainHeadConfig, engine: object = None) -> StageResult:
    from curation.scoring.head_job import train_head_on_pool

    report = train_head_on_pool(inputs.pool, cfg, inputs.out)
    return StageResult(
        {
            "head": storage.url(report.head_path),
            "n_train": report.n_train,
            "n_holdout": report.n_holdout,
            "positives": report.positives,
            "holdout_auc": report.holdout_auc,
        }
    )


def run_score_head(inputs: ScoreInputs, cfg: ScoreHeadConfig, engine: Engine) -> StageResult:
    from curation.engines import run_job
    from curation.scoring.head_job import HeadScoreJob

    return StageResult.from_reports(run_job(HeadScoreJob(inputs.pool, cfg), engine))


TRAIN_HEAD = StageDef("train_head", TrainHeadInputs, run_train_head, TrainHeadConfig)
SCORE_HEAD = StageDef("score_head", ScoreInputs, run_score_head, ScoreHeadConfig)
