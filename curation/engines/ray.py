"""Ray engine: one Ray task per shard, each calling the same shard runner as the local engine.

Attach to a running cluster with ``address="ray://..."`` or ``"auto"``; without one, a local Ray
bound to 127.0.0.1 with ``workers`` CPUs is started (dashboard off) and shut down afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from curation.engines import Engine
from curation.engines.cluster import LOOPBACK, worker_pythonpath
from curation.runner import ShardJob, ShardOutcome, process_shard


def _run(job: ShardJob, shard: str, retries: int) -> ShardOutcome:
    job.setup()
    return process_shard(job, shard, retries)


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

    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        num_gpus_per_task: float = 0.0,
        **init_options: Any,
    ) -> None:
        self.workers = workers
        self.address = address
        self.num_gpus_per_task = num_gpus_per_task
        self.init_options = init_options
        self._owned = False

    def _ensure_ray(self) -> Any:
        if not self.address:
            bind_ray_to_loopback()
        import ray

        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": worker_pythonpath()}}
            if self.address:
                ray.init(address=self.address, runtime_env=env, **self.init_options)
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

    def map_shards(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        if not shards:
            return
        ray = self._ensure_ray()
        task = ray.remote(num_cpus=1, num_gpus=self.num_gpus_per_task, max_retries=0)(_run)
        job_ref = ray.put(job)
        pending = [task.remote(job_ref, s, retries) for s in shards]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False
