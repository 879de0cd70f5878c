"""A rerun sweeps what a kill left under a job's output: atomic-write temp files and staging folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curation.core.io import atomic_path
from curation.core.runner import ShardJob, is_done
from curation.core.stats import StageStats
from curation.engines import run_job


class Writer(ShardJob):
    name = "writer"

    def __init__(self, out: Path) -> None:
        self.out = out

    def shards(self) -> list[str]:
        return ["00000", "00001"]

    def output_dir(self) -> Path:
        return self.out

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        (staging / f"{shard}.txt").write_text(shard)
        return [StageStats.from_verdicts("writer", np.ones(2, bool), [None] * 2)]


def _temp_file_of(path: Path) -> Path:
    """What a kill inside ``atomic_path(path)`` leaves: a temp file named as it names them, written,
    never renamed (the name pattern is read off a real ``atomic_path``)."""
    with atomic_path(path) as tmp:
        name = tmp.name
    left = path.parent / name
    left.write_text("half")
    path.unlink()
    return left


def test_a_rerun_removes_temp_files_and_staging_a_kill_left(tmp_path):
    out = tmp_path / "out"
    leftovers = [
        _temp_file_of(out / "_done" / "00001.done"),  # the kill landed inside a marker write
        _temp_file_of(out / "_stats" / "00001.json"),  # ... inside a stats write
        _temp_file_of(out / "sub" / "00001.parquet"),  # ... inside an output write
    ]
    staged = out / ".staging" / "00001" / "00001.txt"
    staged.parent.mkdir(parents=True)
    staged.write_text("half")
    keep = out / "notes.tmp"  # not an atomic-write temp name: not ours to remove
    keep.write_text("mine")
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers)
    report = run_job(Writer(out), "local")
    assert not report.failed
    assert not [p for p in leftovers if p.exists()]
    assert not [p for p in (out / ".staging").rglob("*") if p.is_file()]
    assert keep.read_text() == "mine"
    assert is_done(out, "00000") and is_done(out, "00001") and (out / "00001.txt").read_text() == "00001"
