"""Which of a job's parallel workers this process is, so a job can pin itself to one device.

Engines that run several workers of one job (the local process pool; Spark and Ray executors)
give each a slot ``rank`` in ``0..count-1`` before ``ShardJob.setup`` runs; a job that owns one
device per worker (one model per GPU) maps its rank onto a device list. The slot travels in
environment variables so that it is set the same way whatever engine started the process, and a
process no engine started (a plain ``run_job`` with one worker, a test) is slot 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RANK_ENV = "CURATION_WORKER_RANK"
COUNT_ENV = "CURATION_WORKER_COUNT"


@dataclass(frozen=True)
class WorkerSlot:
    rank: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.rank < self.count:
            raise ValueError(f"worker slot {self.rank} of {self.count} is out of range")


def set_worker_slot(slot: WorkerSlot) -> None:
    """Record this process's slot (called by an engine in each worker before the job's setup)."""
    os.environ[RANK_ENV] = str(slot.rank)
    os.environ[COUNT_ENV] = str(slot.count)


def worker_slot() -> WorkerSlot:
    """This process's slot; slot 0 of 1 when no engine assigned one."""
    return WorkerSlot(int(os.environ.get(RANK_ENV, "0")), int(os.environ.get(COUNT_ENV, "1")))
