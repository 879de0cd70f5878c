"""Engine parity: Spark (local[2]) and Ray (2 CPUs) give byte-identical outputs and equal stats."""

import shutil

import pytest

from curation.core.pool import Pool
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
    import os

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
