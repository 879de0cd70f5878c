"""What the Spark and Ray engines share: the project's environment on every worker, failed-shard reports.

A cluster's workers are not children of the command that drives them, so nothing the driver set in
its own environment reaches them by itself. :func:`worker_env` is what travels: the project's
switches (no package-index or telemetry calls), thread caps and offline switches the user set, and a
``PYTHONPATH`` that makes this checkout importable. Each task applies it (:func:`unpack_job`) before
it unpickles the job, so modules that read the environment at import time see it too.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from curation.core import storage
from curation.core.runner import ShardJob, ShardOutcome, is_done, load_shard_stats

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
LOOPBACK = "127.0.0.1"

# Set by the project for itself: offline switches for libraries that phone home at import time.
PROJECT_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
# Passed on from the driver when the user set them: thread caps, offline switches, caches, warnings.
FORWARDED_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "TORCH_HOME",
    "PYTHONWARNINGS",
)  # fmt: skip


def worker_pythonpath() -> str:
    """PYTHONPATH for workers: the project root first, so an uninstalled checkout also works."""
    parts = [PROJECT_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return os.pathsep.join(dict.fromkeys(parts))


def worker_env() -> dict[str, str]:
    """The environment every executor and worker of this command gets (see the module docstring)."""
    env = {k: os.environ.get(k, v) for k, v in PROJECT_ENV.items()}
    env.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    env.update(storage.worker_env())  # the job's storage options and S3 endpoint, never a secret env var
    env["PYTHONPATH"] = worker_pythonpath()
    return env


def pack_job(job: ShardJob) -> tuple[dict[str, str], bytes]:
    """The job as bytes plus the environment to set before unpickling it on a worker."""
    return worker_env(), pickle.dumps(job)


def unpack_job(env: dict[str, str], payload: bytes) -> ShardJob:
    """On a worker: apply the driver's environment (the user's own worker settings win), then the job."""
    for key, value in env.items():
        if key != "PYTHONPATH":
            os.environ.setdefault(key, value)
    storage.configure_from_env()
    job: ShardJob = pickle.loads(payload)
    return job


def clear_staging(job: ShardJob, shard: str) -> None:
    """Remove a shard's staging folder that a killed worker left (the runner clears its own)."""
    if storage.is_remote(job.output_dir()):
        return  # staging is a local temp folder there; the rerun's sweep deletes uncommitted objects
    staging = job.output_dir() / ".staging" / shard
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # only when no other shard is staging


def outcomes_after_abort(
    job: ShardJob, shards: Sequence[str], error: BaseException, culprit: str | None
) -> list[ShardOutcome]:
    """Outcomes of a cluster job that ended early (lost executors, retries exhausted), read from disk.

    A shard with a completion marker finished; every other shard failed: ``culprit`` with the
    cluster's reason, the rest because the job was cancelled. Their staging folders are removed.
    """
    out = job.output_dir()
    reason = short_error(error)
    outcomes = []
    for shard in shards:
        if is_done(out, shard):
            outcomes.append(ShardOutcome(shard, "done", load_shard_stats(out, shard)))
            continue
        clear_staging(job, shard)
        why = reason if shard == culprit or culprit is None else f"stopped with the job when {culprit} failed"
        outcomes.append(ShardOutcome(shard, "failed", error=why, attempts=1))
    return outcomes


def short_error(error: BaseException) -> str:
    """One line for a cluster failure (a Py4J error carries ~150 lines of JVM stack)."""
    text = str(error)
    found = re.search(r"Job aborted due to stage failure: (.*?)(?:\n|$)", text)
    if found:
        return f"Spark stage failed: {found.group(1)}"[:400]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(error).__name__}: {line}"[:400]
