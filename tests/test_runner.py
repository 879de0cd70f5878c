import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.core.pool import Pool
from curation.core.runner import is_done
from curation.core.stats import Funnel
from curation.engines import merged_stats, run_job
from curation.filtering.job import FilterJob

SPECS = [{"kind": "caption_length", "name": "caption"}]


def test_filter_job_writes_verdicts_and_a_balanced_funnel(metadata_pool):
    report = run_job(FilterJob(metadata_pool, SPECS), "local")
    assert not report.failed
    pool = Pool(metadata_pool)
    rows = sum(pool.read_samples(s).num_rows for s in pool.shard_ids())
    table = pool.read_attributes("filters")
    assert table.num_rows == rows
    assert {"uid", "caption_keep", "caption_reason", "caption_words"} <= set(table.column_names)
    funnel = Funnel(report.stats)
    funnel.check()
    assert funnel.stages[0].total.seen == rows
    kept = sum(table["caption_keep"].to_pylist())
    assert funnel.stages[0].total.kept == kept
    # every kept caption has at least 3 words, every dropped one carries a reason
    for words, keep, reason in zip(
        table["caption_words"].to_pylist(),
        table["caption_keep"].to_pylist(),
        table["caption_reason"].to_pylist(),
        strict=True,
    ):
        assert keep == (words >= 3 and reason is None) or (not keep and reason)


def test_rerun_skips_finished_shards(metadata_pool):
    job = FilterJob(metadata_pool, SPECS)
    first = run_job(job, "local")
    again = run_job(job, "local")
    assert {o.status for o in again.outcomes} == {"skipped"}
    assert [s.to_dict() for s in again.stats] == [s.to_dict() for s in first.stats]


def test_process_pool_gives_the_same_outputs(metadata_pool, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(metadata_pool, other)
    run_job(FilterJob(metadata_pool, SPECS), "local")
    run_job(FilterJob(other, SPECS), "local", workers=2)
    for shard in Pool(other).shard_ids():
        a = pq.read_table(Pool(metadata_pool).attributes_dir("filters") / f"{shard}.parquet")
        b = pq.read_table(Pool(other).attributes_dir("filters") / f"{shard}.parquet")
        assert a.equals(b)


def test_a_failing_shard_is_reported_and_the_rest_finish(metadata_pool):
    (metadata_pool / "00001.parquet").write_bytes(b"not parquet")
    report = run_job(FilterJob(metadata_pool, SPECS), "local", retries=1)
    assert [o.shard for o in report.failed] == ["00001"]
    assert report.failed[0].attempts == 2
    assert is_done(Pool(metadata_pool).attributes_dir("filters"), "00000")
    assert not (Pool(metadata_pool).attributes_dir("filters") / "00001.parquet").exists()


SLOW_JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from curation.engines import run_job
    from curation.core.runner import ShardJob
    from curation.core.stats import StageStats
    import numpy as np

    class SlowWriter(ShardJob):
        name = "slow"
        def __init__(self, out): self.out = Path(out)
        def shards(self): return ["00000", "00001"]
        def output_dir(self): return self.out
        def run_shard(self, shard, staging):
            with open(staging / f"{shard}.bin", "wb") as f:
                for i in range(200):
                    f.write(bytes([i % 256]) * 1000)
                    f.flush()
                    if shard == "00001" and i == 50:
                        print("HALFWAY", flush=True)
                        time.sleep(float(sys.argv[2]))
            return [StageStats.from_verdicts("slow", np.ones(3, bool), [None] * 3)]

    run_job(SlowWriter(sys.argv[1]), "local")
    print("FINISHED", flush=True)
    """
)


def test_a_shard_killed_half_way_leaves_no_partial_output_and_is_redone(tmp_path):
    script = tmp_path / "slow_job.py"
    script.write_text(SLOW_JOB)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), "60"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.time() + 60
    while time.time() < deadline:
        if "HALFWAY" in proc.stdout.readline():
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # shard 00000 finished; shard 00001 was mid-write: only its staging copy exists
    assert (out / "00000.bin").stat().st_size == 200_000
    assert not (out / "00001.bin").exists()
    assert is_done(out, "00000") and not is_done(out, "00001")
    assert list((out / ".staging").rglob("*.bin"))  # the half-written file never left staging
    rerun = subprocess.run(
        [sys.executable, str(script), str(out), "0"], capture_output=True, text=True, env=env
    )
    assert "FINISHED" in rerun.stdout, rerun.stderr
    assert (out / "00001.bin").stat().st_size == 200_000
    assert not list((out / ".staging").rglob("*.bin"))
    stats = json.loads((out / "_stats" / "00001.json").read_text())
    assert stats["stages"][0]["seen"] == 3


@pytest.mark.parametrize("engine", ["nope"])
def test_unknown_engine_is_a_clear_error(metadata_pool, engine):
    with pytest.raises(ValueError, match="unknown engine"):
        run_job(FilterJob(metadata_pool, SPECS), engine)


def test_merged_stats_read_back_from_disk(metadata_pool):
    job = FilterJob(metadata_pool, SPECS)
    report = run_job(job, "local")
    assert [s.to_dict() for s in merged_stats(job)] == [s.to_dict() for s in report.stats]
