"""The default engine: shards in this process (1 worker) or in a pool of spawned processes."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing.sharedctypes import Synchronized

from curation.core.runner import ShardJob, ShardOutcome, process_shard
from curation.core.workerslot import WorkerSlot, set_worker_slot
from curation.engines import Engine

_worker_job: ShardJob | None = None


def _init_worker(job: ShardJob, next_rank: Synchronized, count: int) -> None:
    global _worker_job
    with next_rank.get_lock():  # each pool process takes the next rank, 0..count-1
        rank = next_rank.value
        next_rank.value += 1
    set_worker_slot(WorkerSlot(rank, count))
    _worker_job = job
    job.setup()


def _run_in_worker(shard: str, retries: int) -> ShardOutcome:
    assert _worker_job is not None
    return process_shard(_worker_job, shard, retries)


class LocalEngine(Engine):
    name = "local"
    distributor = "multiprocessing"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers

    def map_shards(self, job: ShardJob, shards: Sequence[str], retries: int) -> Iterator[ShardOutcome]:
        if self.workers == 1 or len(shards) <= 1:
            job.setup()
            for shard in shards:
                yield process_shard(job, shard, retries)
            return
        # spawn, not fork: workers may hold torch threads or CUDA contexts that fork would corrupt
        ctx = mp.get_context("spawn")
        count = min(self.workers, len(shards))
        with ProcessPoolExecutor(
            max_workers=count,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(job, ctx.Value("i", 0), count),
        ) as pool:
            futures = [pool.submit(_run_in_worker, s, retries) for s in shards]
            for fut in as_completed(futures):
                yield fut.result()
