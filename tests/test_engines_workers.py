"""Attribute files do not depend on the worker count: `--workers 1` and `--workers 2` write the same bytes.

Scoring picks run-time settings from the worker count (loader processes, threads, which GPU);
they go to the log and the shard stats, never into the parquet files. Threads are pinned to 1
here: a different thread count sums floats in another order (the last bit of a score may move).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from curation.core.pool import Pool
from curation.engines import get_engine, run_job
from curation.filtering.job import FilterJob
from curation.scoring import score_pool
from curation.scoring.config import ScoreConfig
from tests.image_pool import write_image_pool
from tests.test_scoring import save_tiny_checkpoint

FILTERS = [{"kind": "caption_length", "name": "caption"}, {"kind": "image_size", "min_side": 8}]


def attribute_bytes(pool: Path) -> dict[str, bytes]:
    root = Pool(pool).root / "attributes"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*.parquet"))}


@pytest.mark.parametrize(
    "name",
    [
        "local",
        pytest.param("spark", marks=[pytest.mark.slow, pytest.mark.spark]),
        pytest.param("ray", marks=[pytest.mark.slow, pytest.mark.ray]),
    ],
)
def test_attribute_files_are_the_same_with_one_or_two_workers(name, tmp_path):
    pool = write_image_pool(tmp_path / "pool", n_shards=3, per_shard=8, failed_every=5)
    cfg = ScoreConfig.model_validate(
        {
            "model": "tiny-vit",
            "pretrained": str(save_tiny_checkpoint(tmp_path / "tiny.pt", seed=0)),
            "device": "cpu",
            "batch_size": 4,
            "threads": 1,  # loader_workers stays automatic: it follows the worker count
        }
    )
    written = {}
    for workers in (1, 2):
        copy = shutil.copytree(pool, tmp_path / f"w{workers}")
        eng = get_engine(name, workers=workers)
        try:
            assert not score_pool(copy, cfg, eng).failed
            assert not run_job(FilterJob(copy, FILTERS), eng).failed
        finally:
            eng.close()
        written[workers] = attribute_bytes(copy)
    assert len(written[1]) == 6  # 3 score + 3 filter files
    assert [k for k in written[1] if written[1][k] != written[2].get(k)] == []
