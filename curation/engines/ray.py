"""Ray engine: each shard goes through the same shard runner as on the local engine.

Cheap-to-set-up jobs run as one Ray task per shard. Jobs whose ``setup`` is costly (a model:
``ShardJob.costly_setup``) run through Ray Data instead: ``map_batches`` over the shard ids with an
actor pool, so each actor loads the model once and then takes shard after shard; with GPUs in the
cluster each actor holds one (``num_gpus=1``, Ray sets its ``CUDA_VISIBLE_DEVICES``), without them
there is one actor per CPU worker. Attach to a running cluster with ``address="ray://..."`` or
``"auto"``; without one, a local Ray bound to 127.0.0.1 with ``workers`` CPUs is started
(dashboard off) and shut down afterwards.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from curation.core.runner import ShardJob, ShardOutcome, process_shard
from curation.core.workerslot import WorkerSlot, set_worker_slot
from curation.engines import Engine
from curation.engines.cluster import LOOPBACK, worker_pythonpath


def _run(job: ShardJob, shard: str, retries: int) -> ShardOutcome:
    job.setup()
    return process_shard(job, shard, retries)


class _ShardActor:
    """A Ray Data actor: the job set up once (its model loaded), then any number of shards."""

    def __init__(self, job: ShardJob, retries: int, count: int) -> None:
        # rank 0: with num_gpus=1 Ray shows each actor only its own GPU; count shares out CPU threads
        set_worker_slot(WorkerSlot(0, count))
        job.setup()
        self.job, self.retries = job, retries

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        outcomes = [process_shard(self.job, str(s), self.retries) for s in batch["shard"]]
        return {"outcome": np.array([pickle.dumps(o) for o in outcomes], dtype=object)}


def bind_ray_to_loopback() -> None:
    """Make a locally started Ray use 127.0.0.1 for every service.

    Ray 2.x ignores ``_node_ip_address="127.0.0.1"`` on Linux (it maps loopback to the routable
    address) unless it runs in its single-machine mode, which this switch selects; then the GCS,
    raylet and workers all listen on 127.0.0.1 only.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


class RayEngine(Engine):
    name = "ray"
    distributor = "ray"  # img2dataset's ray distributor submits its tasks to the Ray started here

    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        num_gpus_per_task: float = 0.0,
        num_gpus_per_actor: float | None = None,
        **init_options: Any,
    ) -> None:
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
        self.num_gpus_per_task = num_gpus_per_task
        self.num_gpus_per_actor = num_gpus_per_actor  # None: 1 when the cluster has GPUs, else 0
        self.init_options = init_options
        self._owned = False

    def _ensure_ray(self) -> Any:
        if not self.address:
            bind_ray_to_loopback()
        import ray

        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": worker_pythonpath()}}
            if self.address:
                # a cluster's workers get the code from the job (ray job submit --working-dir .)
                ray.init(address=self.address, **self.init_options)
            else:
                ray.init(
                    num_cpus=self.workers,
                    _node_ip_address=LOOPBACK,
                    include_dashboard=False,
                    runtime_env=env,
                    log_to_driver=False,
                    **self.init_options,
                )
            self._owned = True
        return ray

    def start(self) -> None:
        self._ensure_ray()

    def map_shards(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        if not shards:
            return
        if job.costly_setup:
            yield from self._map_with_actors(job, shards, retries)
            return
        ray = self._ensure_ray()
        task = ray.remote(num_cpus=1, num_gpus=self.num_gpus_per_task, max_retries=0)(_run)
        job_ref = ray.put(job)
        pending = [task.remote(job_ref, s, retries) for s in shards]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def _map_with_actors(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        """Ray Data ``map_batches`` with an actor pool: one model per GPU, or one per CPU worker."""
        ray = self._ensure_ray()
        from ray import data as ray_data

        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = self.num_gpus_per_actor if self.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
        size = max(1, min(int(gpus // per_actor) if per_actor else self.workers, len(shards)))
        ray_data.DataContext.get_current().enable_progress_bars = False
        ds = ray_data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        mapped = ds.map_batches(
            _ShardActor,
            fn_constructor_args=(job, retries, size),
            batch_size=1,
            batch_format="numpy",
            compute=ray_data.ActorPoolStrategy(size=size),
            num_cpus=1,
            num_gpus=per_actor,
        )
        for row in mapped.iter_rows():
            yield pickle.loads(row["outcome"])

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False
