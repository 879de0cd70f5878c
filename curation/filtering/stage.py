"""The ``copydesc``, ``train_encoder`` and ``filter`` stages: copy-detection descriptors (and the encoder
they may use), and every filter's verdicts."""

from __future__ import annotations

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.engines import Engine, run_job
from curation.filtering.copy_encoder import TrainEncoderConfig
from curation.filtering.copydesc import CopyDescConfig
from curation.filtering.job import FilterJobConfig


class PoolInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")  # a local path or a URL (s3://, gs://, memory://...)


def run_copydesc(inputs: PoolInputs, cfg: CopyDescConfig, engine: Engine) -> StageResult:
    from curation.filtering.copydesc_job import CopyDescJob

    return StageResult.from_reports(run_job(CopyDescJob(inputs.pool, cfg), engine))


class TrainEncoderInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")
    out: storage.Location = storage.location("encoders/copy.pt")


def run_train_encoder(
    inputs: TrainEncoderInputs, cfg: TrainEncoderConfig, engine: object = None
) -> StageResult:
    from curation.filtering.encoder_train import train_encoder_on_pool

    return StageResult(train_encoder_on_pool(inputs.pool, cfg, inputs.out))


def run_filter(inputs: PoolInputs, cfg: FilterJobConfig, engine: Engine) -> StageResult:
    from curation.filtering.job import FilterJob

    return StageResult.from_reports(run_job(FilterJob(inputs.pool, cfg.filters, cfg.name), engine))


COPYDESC = StageDef("copydesc", PoolInputs, run_copydesc, CopyDescConfig, "copydesc/default.yaml")
TRAIN_ENCODER = StageDef("train_encoder", TrainEncoderInputs, run_train_encoder, TrainEncoderConfig)
FILTER = StageDef("filter", PoolInputs, run_filter, FilterJobConfig, "filters/basic.yaml")
