"""The ``copydesc`` and ``filter`` stages: copy-detection descriptors, and every filter's verdicts."""

from __future__ import annotations

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.engines import Engine, run_job
from curation.filtering.copydesc import CopyDescConfig
from curation.filtering.job import FilterJobConfig


class PoolInputs(ConfigModel):
    pool: storage.Location = storage.location("pool")


def run_copydesc(inputs: PoolInputs, cfg: CopyDescConfig, engine: Engine) -> StageResult:
    from curation.filtering.copydesc_job import CopyDescJob

    return StageResult.from_reports(run_job(CopyDescJob(inputs.pool, cfg), engine))


def run_filter(inputs: PoolInputs, cfg: FilterJobConfig, engine: Engine) -> StageResult:
    from curation.filtering.job import FilterJob

    return StageResult.from_reports(run_job(FilterJob(inputs.pool, cfg.filters, cfg.name), engine))


COPYDESC = StageDef("copydesc", PoolInputs, run_copydesc, CopyDescConfig, "copydesc/default.yaml")
FILTER = StageDef("filter", PoolInputs, run_filter, FilterJobConfig, "filters/basic.yaml")
