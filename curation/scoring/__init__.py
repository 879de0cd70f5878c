"""``curate score``: image-text similarity of every pair of a pool under a reference CLIP.

``ScoreJob`` is a ``ShardJob`` (markers, retries, atomic commits come from the shard runner);
``score_pool`` runs it with any engine. See docs/scoring.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.engines import Engine, JobReport, run_job
from curation.scoring.config import ScoreConfig, default_column
from curation.scoring.job import ScoreJob
from curation.scoring.model import ModelLoadError

__all__ = ["ModelLoadError", "ScoreConfig", "ScoreJob", "default_column", "score_pool"]


def score_pool(
    pool: str | Path, cfg: ScoreConfig, engine: Engine | str = "local", **engine_options: Any
) -> JobReport:
    """Score every shard of ``pool`` not scored yet; finished shards are skipped."""
    job = ScoreJob(pool, cfg)
    job.prepare()  # idempotent: safe also where run_job calls prepare() itself
    return run_job(job, engine, **engine_options)
