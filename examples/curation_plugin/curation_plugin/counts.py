"""A stage plugin: samples per source and status of a pool, as one JSON file (a job file step)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from curation.core.config import ConfigModel
from curation.core.pool import Pool
from curation.core.stagedef import StageDef, StageResult


class CountsInputs(ConfigModel):
    pool: Path = Path("pool")
    out: Path = Path("source_counts.json")


class CountsConfig(ConfigModel):
    by: str = "source"


def run_counts(inputs: CountsInputs, cfg: CountsConfig, engine: Any) -> StageResult:
    pool = Pool(inputs.pool)
    counts: Counter[str] = Counter()
    for shard in pool.shard_ids():
        table = pool.read_rows(shard)
        column = table[cfg.by].to_pylist() if cfg.by in table.column_names else ["unknown"] * table.num_rows
        counts.update(str(v) for v in column)
    inputs.out.write_text(json.dumps(dict(sorted(counts.items()))))
    return StageResult({"counts": dict(counts), "out": str(inputs.out)})


STAGE = StageDef("source_counts", CountsInputs, run_counts, CountsConfig)
