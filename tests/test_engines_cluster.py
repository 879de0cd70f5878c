"""The CLI on real clusters, attached as a user would: a Spark standalone master and worker, a Ray head.

Each test reruns itself in a loopback-only network namespace (``tests/clusterkit.py``) and checks
there that nothing listens on an address other than loopback. On each cluster: a filter stage
gives the same bytes as the local engine; Spark runs two tasks of the stage at once; an executor
(Spark) or a shard's worker (Ray) killed mid-stage, with retries exhausted, ends the command
non-zero within 60 s naming the shard, leaves no staging folder, and the rerun completes the
same outputs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from curation.core.pool import Pool
from curation.engines import run_job
from curation.filtering.job import FilterJob
from tests import clusterkit as ck
from tests.conftest import write_metadata_pool

pytestmark = pytest.mark.slow

FILTERS = [
    {"kind": "caption_length", "name": "caption", "min_words": 3, "min_chars": 6},
    {"kind": "language", "keep": ["en"], "min_score": 0.0},
]
SHARDS, ROWS = 6, 60_000  # a few seconds per shard: long enough to kill a worker mid-shard


def outputs(pool: Path) -> dict[str, bytes]:
    out = Pool(pool).attributes_dir("filters")
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


def staging_entries(pool: Path) -> list[Path]:
    staging = Pool(pool).attributes_dir("filters") / ".staging"
    return list(staging.iterdir()) if staging.exists() else []


@pytest.fixture
def pools(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]] | None:
    """The filter config, a pool to run on, and the local engine's outputs on a copy of it."""
    if not ck.inside():
        return None  # made by the rerun inside the namespace
    pool = write_metadata_pool(tmp_path / "pool", n_shards=SHARDS, per_shard=ROWS)
    ref = tmp_path / "ref"
    shutil.copytree(pool, ref)
    assert not run_job(FilterJob(ref, FILTERS), "local").failed
    config = tmp_path / "filters.yaml"
    config.write_text(yaml.safe_dump({"name": "filters", "filters": FILTERS}))
    return config, pool, outputs(ref)


def run_and_kill(args: list[str], pool: Path, env: dict[str, str], victims) -> tuple[int, str, float]:  # type: ignore[no-untyped-def]
    """Start the CLI, kill what ``victims()`` names once a shard is in flight; (rc, output, seconds)."""
    proc = ck.curate(args, env)
    ck.wait_for(lambda: staging_entries(pool), 240, "a shard in flight")
    killed = ck.wait_for(victims, 30, "a worker to kill")
    t0 = time.monotonic()
    for pid in killed[:1]:
        ck.kill_tree(pid)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out, time.monotonic() - t0


def rerun_and_check(args: list, env: dict[str, str], pool: Path, ref: object) -> None:
    """The same command again finishes the job with the uninterrupted run's outputs, nothing left
    staged, and nothing listening beyond loopback."""
    again = ck.curate(args, env)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert outputs(pool) == ref and staging_entries(pool) == []
    assert ck.non_loopback(ck.listening_addresses()) == set()


def check_failure_report(rc: int, out: str, seconds: float, pool: Path) -> None:
    assert rc != 0, out
    assert seconds < 60, f"the command took {seconds:.0f} s to give up after the kill"
    for raw in ("Traceback", "Py4JJavaError"):  # a clear report, not ~150 lines of stack
        at = out.find(raw)
        assert at < 0, out[max(0, at - 3000) : at + 3000]
    assert "shard(s) failed" in out and "Rerun" in out, out
    done = {p.stem for p in (Pool(pool).attributes_dir("filters") / "_done").glob("*.done")}
    named = [s for s in (f"{i:05d}" for i in range(SHARDS)) if f"{s} (" in out]
    assert named and not set(named) & done, out  # the failed shards are named, and none of them finished
    assert staging_entries(pool) == [] and not (Pool(pool).attributes_dir("filters") / ".staging").exists()


@pytest.mark.spark
def test_spark_standalone_cluster(request, pools, tmp_path):
    if not ck.inside():
        ck.rerun_inside(request.node.nodeid)
        return
    config, pool, ref = pools
    assert ck.interfaces() == ["lo"]
    events = tmp_path / "events"
    events.mkdir()
    user_conf = {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": f"file://{events}",
        "spark.eventLog.compress": "false",
        "spark.task.maxFailures": "1",  # the user's choice: no task retries, so one kill is final
        "spark.executor.memory": "1g",
    }
    with ck.spark_standalone(tmp_path, cores=2, conf=user_conf) as conf_dir:
        env = {"SPARK_CONF_DIR": str(conf_dir), "SPARK_LOCAL_IP": "127.0.0.1"}
        args = ["filter", pool, "-c", config, "--engine", "spark", "--master", ck.SPARK_MASTER]
        clean = shutil.copytree(pool, tmp_path / "clean")
        run = ck.curate([*args[:1], clean, *args[2:]], env)
        ck.wait_for(lambda: ck.spark_executors(), 240, "an executor")
        assert ck.non_loopback(ck.listening_addresses()) == set()
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out
        assert outputs(clean) == ref

        # one job for the stage, its tasks two at a time on the worker's two cores
        ends = [e for e in ck.read_event_log(events) if e["Event"] == "SparkListenerTaskEnd"]
        by_stage: dict[int, list[tuple[int, int]]] = {}
        for e in ends:
            info = e["Task Info"]
            by_stage.setdefault(e["Stage ID"], []).append((info["Launch Time"], info["Finish Time"]))
        (spans,) = [s for s in by_stage.values() if len(s) == SHARDS]
        spans.sort()
        assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), spans

        rc, out, seconds = run_and_kill(args, pool, env, ck.spark_executors)
        check_failure_report(rc, out, seconds, pool)
        assert "ExecutorLostFailure" in out or "exited" in out, out
        rerun_and_check(args, env, pool, ref)


@pytest.mark.ray
def test_ray_head_with_token_auth(request, pools, tmp_path):
    if not ck.inside():
        ck.rerun_inside(request.node.nodeid)
        return
    config, pool, ref = pools
    assert ck.interfaces() == ["lo"]
    token = tmp_path / "auth_token"
    token.write_text("0123456789abcdef0123456789abcdef")
    # a token exists, so `ray start` turns token authentication on; the client is not told to
    env = {"RAY_AUTH_TOKEN_PATH": str(token)}
    os.environ.pop("RAY_AUTH_MODE", None)
    with ck.ray_head(tmp_path, cpus=2, env=env):
        assert ck.non_loopback(ck.listening_addresses()) == set()
        args = ["filter", pool, "-c", config, "--engine", "ray", "--address", ck.RAY_GCS]
        clean = shutil.copytree(pool, tmp_path / "clean")
        run = ck.curate([*args[:1], clean, *args[2:]], env)
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out
        assert outputs(clean) == ref

        rc, out, seconds = run_and_kill(
            args, pool, {**env, "CURATION_RAY_MAX_RETRIES": "0"}, ck.ray_shard_tasks
        )
        check_failure_report(rc, out, seconds, pool)
        rerun_and_check(args, env, pool, ref)


@pytest.mark.ray
def test_ray_job_submit_and_ray_client(request, pools, tmp_path):
    """The two other documented attach paths: ``ray job submit`` (RAY_ADDRESS inside) and ``ray://``."""
    pytest.importorskip("aiohttp", reason="ray job submit needs ray[default] (clip-curation[ray-cluster])")
    pytest.importorskip("grpc", reason="ray:// needs ray[client] (clip-curation[ray-cluster])")
    if not ck.inside():
        ck.rerun_inside(request.node.nodeid)
        return
    config, pool, ref = pools
    token = tmp_path / "auth_token"
    token.write_text("fedcba9876543210fedcba9876543210")
    env = {"RAY_AUTH_TOKEN_PATH": str(token)}
    with ck.ray_head(tmp_path, cpus=2, env=env, dashboard=True):
        assert ck.non_loopback(ck.listening_addresses()) == set()
        runtime_env = json.dumps({"env_vars": {"PYTHONPATH": str(ck.ROOT)}})  # this checkout, shared
        submitted = shutil.copytree(pool, tmp_path / "submitted")
        job = subprocess.run(
            ["ray", "job", "submit", "--address", ck.RAY_DASHBOARD, "--runtime-env-json", runtime_env,
             "--", sys.executable, "-m", "pipelines", "filter", str(submitted), "-c", str(config),
             "--engine", "ray"],
            cwd=ck.ROOT, env={**os.environ, **env, "RAY_AUTH_MODE": "token"},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-6000:] + job.stderr[-3000:]
        assert outputs(submitted) == ref

        client = ck.curate(["filter", pool, "-c", config, "--engine", "ray", "--address", ck.RAY_CLIENT], env)
        out, _ = client.communicate(timeout=600)
        assert client.returncode == 0, out
        assert outputs(pool) == ref
        assert ck.non_loopback(ck.listening_addresses()) == set()
