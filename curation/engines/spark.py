"""Spark engine: one task per shard, each calling the same shard runner as the local engine.

Attach to an existing cluster with ``master="spark://host:7077"`` (executors then need the
project importable: a shared checkout named by ``spark.executorEnv.PYTHONPATH``, or ``--py-files``),
or run under spark-submit, where its session and conf are used as they are; without either, a
``local[N]`` session bound to 127.0.0.1 is started and stopped by this engine.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

from curation.core.runner import ShardJob, ShardOutcome, process_shard
from curation.engines import Engine
from curation.engines.cluster import LOOPBACK, worker_pythonpath

SUBMIT_GATEWAY_ENV = "PYSPARK_GATEWAY_PORT"  # set when spark-submit launched this Python driver

# Python workers outlive their tasks (spark.python.worker.reuse): a job whose setup loads a model
# keeps it here, keyed by the job's pickled form, so each worker loads it once, not once per shard.
_set_up_jobs: dict[bytes, ShardJob] = {}


def _set_up(job: ShardJob) -> ShardJob:
    if not job.costly_setup:
        job.setup()
        return job
    key = hashlib.sha256(pickle.dumps(job)).digest()
    if key not in _set_up_jobs:
        _set_up_jobs.clear()  # one model per worker: drop the previous job's
        job.setup()
        _set_up_jobs[key] = job
    return _set_up_jobs[key]


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

    def session(self) -> Any:
        if self._spark is not None:
            return self._spark
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None and self.master is None:
            self._spark = active
            return active
        if self.master is None and SUBMIT_GATEWAY_ENV in os.environ:
            # started by spark-submit: master, executors and their PYTHONPATH come from its conf
            self._spark = SparkSession.builder.appName("curate").getOrCreate()
            return self._spark  # not ours to stop: later jobs of this driver reuse it
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        os.environ["PYTHONPATH"] = worker_pythonpath()
        builder = (
            SparkSession.builder.appName("curate")
            .master(self.master or f"local[{self.workers}]")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.python.worker.reuse", "true")
            .config("spark.task.maxFailures", "1")  # retries are the runner's, so stats stay exact
            .config("spark.executorEnv.PYTHONPATH", worker_pythonpath())
        )
        if self.master is None or self.master.startswith("local"):
            builder = builder.config("spark.driver.host", LOOPBACK).config(
                "spark.driver.bindAddress", LOOPBACK
            )
        for key, value in self.conf.items():
            builder = builder.config(key, value)
        self._spark = builder.getOrCreate()
        self._spark.sparkContext.setLogLevel("ERROR")
        self._owned = True
        return self._spark

    def start(self) -> None:
        self.session()

    def map_shards(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        if not shards:
            return
        sc = self.session().sparkContext

        def run_partition(items: Iterator[str]) -> Iterator[ShardOutcome]:
            ready = _set_up(job)  # per partition; a model once per Python worker
            for shard in items:
                yield process_shard(ready, shard, retries)

        rdd = sc.parallelize(list(shards), numSlices=len(shards))
        yield from rdd.mapPartitions(run_partition).toLocalIterator()

    def close(self) -> None:
        if self._spark is not None and self._owned:
            self._spark.stop()
        self._spark = None
