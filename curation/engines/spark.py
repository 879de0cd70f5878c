"""Spark engine: one Spark job per stage, one task per shard, each calling the same shard runner.

The shard ids become an RDD with one partition each; ``mapPartitions`` runs the runner on them and
``collect`` brings the outcomes back once, so a stage is a single Spark job whose tasks run as many
at a time as the cluster has task slots. Attach to an existing cluster with
``master="spark://host:7077"`` (executors then need the project importable: a shared checkout,
whose path this engine passes as ``spark.executorEnv.PYTHONPATH``, or ``--py-files``), or run under
spark-submit, whose session and conf are used as they are; without either, a ``local[N]`` session
bound to 127.0.0.1 is started and stopped by this engine. Only that local session gets loopback
settings: attaching leaves the user's network settings (``SPARK_LOCAL_IP``, ``spark.driver.host``)
alone, so executors on other machines can reach the driver.

A task lost with its executor is retried by Spark (``spark.task.maxFailures``, Spark's default
unless set); when retries are exhausted the job ends, and every shard without a completion marker
is reported failed, its staging folder removed (:func:`curation.engines.cluster.outcomes_after_abort`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from curation.core.runner import ShardJob, ShardOutcome, process_shard
from curation.engines import Engine
from curation.engines.cluster import LOOPBACK, outcomes_after_abort, pack_job, unpack_job, worker_env

log = logging.getLogger(__name__)

SUBMIT_GATEWAY_ENV = "PYSPARK_GATEWAY_PORT"  # set when spark-submit launched this Python driver
LOG_LEVEL_ENV = "CURATION_SPARK_LOG_LEVEL"  # Spark's own log level; WARN unless asked
CANCEL_WAIT_S = 30.0  # how long to wait for a failed job's other tasks to be killed

# Python workers outlive their tasks (spark.python.worker.reuse): a job whose setup loads a model
# keeps it here, keyed by the job's pickled form, so each worker loads it once, not once per shard.
_set_up_jobs: dict[bytes, ShardJob] = {}
_job_groups = itertools.count()


def _set_up(env: dict[str, str], payload: bytes) -> ShardJob:
    key = hashlib.sha256(payload).digest()
    if key in _set_up_jobs:
        return _set_up_jobs[key]
    job = unpack_job(env, payload)
    job.setup()
    if job.costly_setup:
        _set_up_jobs.clear()  # one model per worker: drop the previous job's
        _set_up_jobs[key] = job
    return job


def _run_partitions(env: dict[str, str], payload: bytes, shards: list[str], retries: int) -> Any:
    """The task function: partition ``i`` holds shard index ``i``."""

    def run(indexes: Iterator[int]) -> Iterator[ShardOutcome]:
        job = _set_up(env, payload)  # per task; a model once per Python worker
        for i in indexes:
            yield process_shard(job, shards[i], retries)

    return run


class SparkEngine(Engine):
    name = "spark"
    distributor = "pyspark"  # img2dataset's pyspark distributor uses the session this engine started

    def __init__(
        self, workers: int = 2, master: str | None = None, conf: dict[str, Any] | None = None
    ) -> None:
        self.workers = workers
        self.master = master
        self.conf = conf or {}
        self._owned = False
        self._spark: Any = None

    @property
    def local(self) -> bool:
        """Whether this engine starts its own ``local[N]`` Spark (the only case bound to loopback)."""
        return self.master is None or self.master.startswith("local")

    def session(self) -> Any:
        if self._spark is not None:
            return self._spark
        from pyspark import SparkConf
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None and self.master is None:
            self._spark = active
            return active
        if self.master is None and SUBMIT_GATEWAY_ENV in os.environ:
            # started by spark-submit: its master and conf stand (they cannot be read before the
            # context exists); the project's environment travels with each task instead
            self._spark = SparkSession.builder.appName("curate").getOrCreate()
            sc = self._spark.sparkContext
            if LOG_LEVEL_ENV in os.environ or not sc.getConf().contains("spark.log.level"):
                sc.setLogLevel(os.environ.get(LOG_LEVEL_ENV, "WARN"))
            return self._spark  # not ours to stop: later jobs of this driver reuse it
        if self.local:
            os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        os.environ["PYTHONPATH"] = worker_env()["PYTHONPATH"]  # local[N] Python workers inherit it
        builder = (
            SparkSession.builder.appName("curate")
            .master(self.master or f"local[{self.workers}]")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.python.worker.reuse", "true")
        )
        if self.local:
            builder = (
                builder.config("spark.ui.enabled", "false")
                .config("spark.driver.host", LOOPBACK)
                .config("spark.driver.bindAddress", LOOPBACK)
            )
        given = SparkConf()  # spark-defaults.conf: the user's settings win
        for key, value in worker_env().items():
            if not given.contains(f"spark.executorEnv.{key}"):
                builder = builder.config(f"spark.executorEnv.{key}", value)
        if not given.contains("spark.log.level"):  # from the context's start: its INFO lines are hundreds
            level = os.environ.get(LOG_LEVEL_ENV, "ERROR" if self.local else "WARN")
            builder = builder.config("spark.log.level", level)
        for key, value in self.conf.items():
            builder = builder.config(key, value)
        self._spark = builder.getOrCreate()
        self._owned = True
        return self._spark

    def start(self) -> None:
        self.session()

    def map_shards(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        if not shards:
            return
        from py4j.protocol import Py4JError

        sc = self.session().sparkContext
        env, payload = pack_job(job)
        group = f"curate-{job.name}-{os.getpid()}-{next(_job_groups)}"
        sc.setJobGroup(group, f"curate {job.name}: {len(shards)} shards", interruptOnCancel=True)
        rdd = sc.parallelize(range(len(shards)), numSlices=len(shards))
        try:
            outcomes = rdd.mapPartitions(_run_partitions(env, payload, list(shards), retries)).collect()
        except Py4JError as exc:
            self._wait_for_tasks(sc, group)
            found = re.search(r"Task (\d+) in stage", str(exc))
            culprit = shards[int(found.group(1))] if found else None
            outcomes = outcomes_after_abort(job, shards, exc, culprit)
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        yield from outcomes

    @staticmethod
    def _wait_for_tasks(sc: Any, group: str) -> None:
        """After a failed job: wait until its other tasks are killed, so none writes after the sweep."""
        sc.cancelJobGroup(group)
        tracker = sc.statusTracker()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            stages = [
                tracker.getStageInfo(s)
                for j in tracker.getJobIdsForGroup(group)
                if (info := tracker.getJobInfo(j)) is not None
                for s in info.stageIds
            ]
            if not any(st is not None and st.numActiveTasks > 0 for st in stages):
                return
            time.sleep(0.2)
        log.warning("tasks of %s still running %.0f s after the job failed", group, CANCEL_WAIT_S)

    def close(self) -> None:
        if self._spark is not None and self._owned:
            self._spark.stop()
        self._spark = None
