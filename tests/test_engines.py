"""Engine parity: Spark (local[2]) and Ray (2 CPUs) give byte-identical outputs and equal stats."""

import json
import os
import shutil

import numpy as np
import pytest

from curation.core.pool import Pool
from curation.core.runner import ShardJob
from curation.core.stats import StageStats
from curation.engines import get_engine, run_job
from curation.filtering.job import FilterJob
from tests.clusterkit import ROOT

SPECS = [{"kind": "caption_length", "name": "caption"}]


def _outputs(pool_dir):
    out = Pool(pool_dir).attributes_dir("filters")
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine", [pytest.param("spark", marks=pytest.mark.spark), pytest.param("ray", marks=pytest.mark.ray)]
)
def test_engine_matches_local_byte_for_byte(metadata_pool, tmp_path, engine):
    other = tmp_path / engine
    shutil.copytree(metadata_pool, other)
    local = run_job(FilterJob(metadata_pool, SPECS), "local")
    eng = get_engine(engine, workers=2)
    try:
        remote = run_job(FilterJob(other, SPECS), eng)
        again = run_job(FilterJob(other, SPECS), eng)
        assert _bound_address(eng) == "127.0.0.1"
    finally:
        eng.close()
    assert not remote.failed
    assert [o.status for o in remote.outcomes] == ["done"] * len(local.outcomes)
    assert _outputs(other) == _outputs(metadata_pool)
    assert [s.to_dict() for s in remote.stats] == [s.to_dict() for s in local.stats]
    # a rerun on the same engine finishes nothing new
    assert {o.status for o in again.outcomes} == {"skipped"}


def _bound_address(eng):
    if eng.name == "spark":
        conf = eng.session().sparkContext.getConf()
        assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
        return conf.get("spark.driver.host")
    import ray

    (node,) = ray.nodes()
    return node["NodeManagerAddress"]


def test_the_project_environment_travels_with_each_task(monkeypatch, metadata_pool):
    """Workers get the project's switches and the driver's thread caps; a worker's own values win."""
    from curation.engines.cluster import PROJECT_ENV, pack_job, unpack_job

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env, payload = pack_job(FilterJob(metadata_pool, SPECS))
    assert {k: env[k] for k in PROJECT_ENV} == PROJECT_ENV and env["OMP_NUM_THREADS"] == "3"
    assert "HF_HUB_OFFLINE" not in env and env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    # on a worker: unset keys are applied before the job is unpickled, set ones are kept
    for key in PROJECT_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job = unpack_job(env, payload)
    assert {k: os.environ[k] for k in PROJECT_ENV} == PROJECT_ENV and os.environ["OMP_NUM_THREADS"] == "1"
    assert isinstance(job, FilterJob) and job.shards() == FilterJob(metadata_pool, SPECS).shards()


_SETUPS: dict[str, int] = {}  # in a worker process: how often it set each job up


class SetupCounter(ShardJob):
    """Writes, for each shard, the process that ran it, how often that process had set the job up,
    a project switch as that process saw it, and its niceness."""

    name = "setup-counter"

    def __init__(self, out, n):
        self.out, self.n = out, n

    def shards(self):
        return [f"{i:05d}" for i in range(self.n)]

    def output_dir(self):
        return self.out

    def setup(self):
        _SETUPS[str(self.out)] = _SETUPS.get(str(self.out), 0) + 1

    def run_shard(self, shard, staging):
        switch = os.environ.get("NO_ALBUMENTATIONS_UPDATE")
        seen = [os.getpid(), _SETUPS.get(str(self.out), 0), switch, os.nice(0)]
        (staging / f"{shard}.json").write_text(json.dumps(seen))
        return [StageStats.from_verdicts("counter", np.ones(1, bool), [None])]


def _ray_workers():
    """Pids of the Ray worker processes under this one (Ray names them ray::IDLE, ray::<task>...)."""
    import psutil

    names = {p.pid: p.name() for p in psutil.Process().children(recursive=True)}
    return {pid for pid, name in names.items() if name.startswith("ray::") and not name.endswith("Agent")}


@pytest.mark.slow
@pytest.mark.ray
def test_a_local_ray_runs_shards_on_its_own_workers_setting_the_job_up_once_each(monkeypatch, tmp_path):
    """No idle extra workers (the project's environment reaches the raylet, not a job runtime_env,
    which would make Ray start new workers for the tasks), setup once per worker, not per shard, and
    workers at the command's priority (not Ray's nice 15)."""
    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)  # the engine sends it to its workers
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # workers unpickle SetupCounter from here
    eng = get_engine("ray", workers=2)
    try:
        eng.start()
        started = _ray_workers()
        report = run_job(SetupCounter(tmp_path / "out", 8), eng)
        after = _ray_workers()
    finally:
        eng.close()
    assert not report.failed and len(started) == 2 and after == started
    seen = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert len(seen) == 8
    assert {pid for pid, *_ in seen} <= started
    assert [tuple(rest) for _, *rest in seen] == [(1, "1", os.nice(0))] * 8
