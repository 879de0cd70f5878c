"""Ray engine: each shard goes through the same shard runner as on the local engine.

Cheap-to-set-up jobs run as one Ray task per shard, all submitted at once and then gathered.
Jobs whose ``setup`` is costly (a model: ``ShardJob.costly_setup``) run through Ray Data instead:
``map_batches`` over the shard ids with an actor pool, so each actor loads the model once and then
takes shard after shard; with GPUs in the cluster each actor holds one (``num_gpus=1``, Ray sets
its ``CUDA_VISIBLE_DEVICES``), without them there is one actor per CPU worker.

Attach to a running cluster with ``address="HOST:PORT"`` (its GCS), ``"auto"`` (on a cluster
node), ``"ray://HOST:10001"`` (Ray Client, ``ray[client]``), or from inside ``ray job submit``
(``RAY_ADDRESS``); a cluster with token authentication (Ray >= 2.52) is joined with the token
``ray start`` would use (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).
Without an address, a local Ray bound to 127.0.0.1 with ``workers`` CPUs is started (dashboard
off) and shut down afterwards: the project's environment set for its raylet (so the tasks run on
the worker processes ``ray.init`` starts), its workers at the command's priority, and ready before
the first job. A worker keeps a job set up between its shards.

A task whose worker dies is retried by Ray ``max_retries`` times (``CURATION_RAY_MAX_RETRIES``,
default 1); after that its shard is reported failed and its staging folder removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from curation.core.runner import ShardJob, ShardOutcome, process_shard
from curation.core.workerslot import WorkerSlot, set_worker_slot
from curation.engines import Engine
from curation.engines.cluster import (
    LOOPBACK,
    clear_staging,
    outcomes_after_abort,
    pack_job,
    short_error,
    unpack_job,
    worker_env,
)

MAX_RETRIES_ENV = "CURATION_RAY_MAX_RETRIES"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager in a submitted job's driver


_worker_job: tuple[str, ShardJob] | None = None  # in a worker: the last job it ran, set up, by its key


def _run(env: dict[str, str], payload: bytes, key: str, shard: str, retries: int) -> ShardOutcome:
    """One shard in a Ray worker; the job is unpickled and set up once per worker, as on the local engine."""
    global _worker_job
    if _worker_job is None or _worker_job[0] != key:
        _worker_job = None  # the previous job's model or tables go before the next one's load
        job = unpack_job(env, payload)
        job.setup()
        _worker_job = (key, job)
    return process_shard(_worker_job[1], shard, retries)


class _ShardActor:
    """A Ray Data actor: the job set up once (its model loaded), then any number of shards."""

    def __init__(self, env: dict[str, str], payload: bytes, retries: int, count: int) -> None:
        # rank 0: with num_gpus=1 Ray shows each actor only its own GPU; count shares out CPU threads
        set_worker_slot(WorkerSlot(0, count))
        job = unpack_job(env, payload)
        job.setup()
        self.job, self.retries = job, retries

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        outcomes = [process_shard(self.job, str(s), self.retries) for s in batch["shard"]]
        return {"outcome": np.array([pickle.dumps(o) for o in outcomes], dtype=object)}


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process meanwhile (for the processes it starts), then restored."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _worker_pid() -> int:
    time.sleep(0.05)  # long enough that the tasks of one round run on different workers
    return os.getpid()


def wait_for_workers(ray: Any, count: int, timeout: float = 60.0) -> None:
    """Return once ``count`` worker processes have each run a task.

    ``ray.init`` starts one worker process per CPU but returns before they have started (imported
    Ray, registered with the raylet); without this wait their start falls into the first job. A
    worker that cannot start is left for the job to report, shard by shard.
    """
    from ray.exceptions import GetTimeoutError, RayError

    probe = ray.remote(num_cpus=1, max_retries=0)(_worker_pid)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    with contextlib.suppress(GetTimeoutError, RayError):
        while len(seen) < count and time.monotonic() < deadline:
            refs = [probe.remote() for _ in range(count)]
            seen.update(ray.get(refs, timeout=max(deadline - time.monotonic(), 0.1)))


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


def attach_env_vars() -> dict[str, str]:
    """The project's environment for a job on an attached cluster (img2dataset's tasks get it too).

    Not ``PYTHONPATH``: there the code comes with the job (``working_dir``). Inside ``ray job
    submit`` Ray refuses a key that the submitted runtime env sets as well, and the submitter's wins.
    """
    env = {k: v for k, v in worker_env().items() if k != "PYTHONPATH"}
    injected = json.loads(os.environ.get(JOB_CONFIG_ENV, "{}"))
    taken = (injected.get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in env.items() if k not in taken}


def join_token_auth() -> None:
    """Send the cluster's token when one is available, as ``ray start`` does (Ray >= 2.52).

    ``ray start --head`` turns token authentication on when a token exists, but ``ray.init`` of a
    client leaves it off unless ``RAY_AUTH_MODE=token``; the client would then be refused
    (``InvalidAuthToken``). An explicit ``RAY_AUTH_MODE`` is left as it is.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


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
        self.max_retries = int(os.environ.get(MAX_RETRIES_ENV, "1"))
        self._owned = False

    def _ensure_ray(self) -> Any:
        if not self.address:
            bind_ray_to_loopback()
        import ray

        if not ray.is_initialized():
            if self.address:
                # a cluster's workers get the code from the job (ray job submit --working-dir .);
                # the rest of the project's environment: the job's env_vars, and with each task (unpack_job)
                join_token_auth()
                options = dict(self.init_options)
                if not self.address.startswith("ray://"):  # the client server then fails to start
                    options.setdefault("runtime_env", {"env_vars": attach_env_vars()})
                ray.init(address=self.address, **options)
            else:
                # The project's environment goes to the raylet, whose workers inherit it, not into a
                # job runtime_env: Ray starts `workers` worker processes with ray.init, and a job
                # runtime_env would leave them idle and start as many new ones for the first tasks.
                # Workers at the command's own priority, as the local engine's and Spark's: Ray's
                # default (nice 15) gives them up to any other process on the machine.
                options = dict(self.init_options)
                options["_system_config"] = {"worker_niceness": 0, **options.get("_system_config", {})}
                with _environ(worker_env()):
                    ray.init(
                        num_cpus=self.workers,
                        _node_ip_address=LOOPBACK,
                        include_dashboard=False,
                        log_to_driver=False,
                        **options,
                    )
                wait_for_workers(ray, self.workers)  # their start is the engine's, not the first job's
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
        from ray.exceptions import RayError

        task = ray.remote(num_cpus=1, num_gpus=self.num_gpus_per_task, max_retries=self.max_retries)(_run)
        env, payload = pack_job(job)
        # the job stored once, not pickled into every task, with a key its workers keep it set up by;
        # every task submitted at once, then gathered as they finish
        payload_ref, key = ray.put(payload), uuid.uuid4().hex
        shard_of = {task.remote(env, payload_ref, key, s, retries): s for s in shards}
        pending, lost = list(shard_of), []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            shard = shard_of[done[0]]
            try:
                yield ray.get(done[0])
            except RayError as exc:  # its worker died (or the cluster went) after max_retries
                clear_staging(job, shard)
                lost.append(shard)
                yield ShardOutcome(shard, "failed", error=short_error(exc), attempts=self.max_retries + 1)
        for shard in lost:  # again, now that no other shard is staging: the empty .staging goes too
            clear_staging(job, shard)

    def _map_with_actors(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        """Ray Data ``map_batches`` with an actor pool: one model per GPU, or one per CPU worker."""
        ray = self._ensure_ray()
        from ray import data as ray_data
        from ray.exceptions import RayError

        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = self.num_gpus_per_actor if self.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
        size = max(1, min(int(gpus // per_actor) if per_actor else self.workers, len(shards)))
        ray_data.DataContext.get_current().enable_progress_bars = False
        ds = ray_data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        mapped = ds.map_batches(
            _ShardActor,
            fn_constructor_args=(*pack_job(job), retries, size),
            batch_size=1,
            batch_format="numpy",
            compute=ray_data.ActorPoolStrategy(size=size),
            num_cpus=1,
            num_gpus=per_actor,
        )
        seen: set[str] = set()
        try:
            for row in mapped.iter_rows():
                outcome: ShardOutcome = pickle.loads(row["outcome"])
                seen.add(outcome.shard)
                yield outcome
        except RayError as exc:  # an actor died more often than Ray Data retries it
            yield from outcomes_after_abort(job, [s for s in shards if s not in seen], exc, None)

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False
