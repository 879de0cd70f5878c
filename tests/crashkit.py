"""Crash-and-resume checks for the stage CLIs: kill a real ``python -m pipelines <stage>`` with SIGKILL
mid-job, rerun it, and compare what it leaves with an uninterrupted run's outputs.

:func:`kill_at` kills at a named write point (inside or after the n-th atomic write of a marker,
stats file or staged output), deterministically: each resume test enumerates those points.
:func:`kill_mid_job` (for img2dataset, whose writes are its own) kills after the ``n``-th shard
completion marker appears (``n`` drawn from a seeded
generator), so shards are finished, in flight and not started when it hits. The whole process
group is killed, as a crashed machine would stop it: worker processes (img2dataset's, a local
engine's pool) die with the driver. Outputs compare byte for byte, except parquet files (compared
as tables: writer metadata may differ), tars (compared member by member: header times may
differ), JSON (compared without wall-clock fields) and paths a test names as volatile.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
# wall-clock and timing fields: never equal between two runs
# Keys that differ between two correct runs. code_version too: it names the checkout (+gSHA, .dirty
# when edited), so a commit or an edit between the reference run and the killed run would fail it.
VOLATILE_KEYS = {
    "finished", "created", "seconds", "start_time", "end_time", "duration", "wall_time", "code_version",
}  # fmt: skip
STARTUP_TIMEOUT_S = 240  # `python -m pipelines` imports torch and open_clip: slow on a loaded 2-core CI box


def cli(args: Sequence[str], cwd: Path = ROOT) -> list[str]:
    return [sys.executable, "-m", "pipelines", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def run_to_completion(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cli(args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@dataclass
class Kill:
    markers_at_kill: int
    seconds: float


def kill_mid_job(args: Sequence[str], watch: Path, pattern: str, seed: int, max_markers: int = 3) -> Kill:
    """Start the command, SIGKILL its process group once the n-th file matching ``watch/pattern``
    (rglob) exists, n in [1, max_markers] seeded; fails if the job finished before the kill."""
    n = random.Random(seed).randint(1, max_markers)
    start = time.monotonic()
    proc = subprocess.Popen(
        cli(args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        while True:
            found = len(list(watch.rglob(pattern))) if watch.exists() else 0
            if found >= n:
                break
            if proc.poll() is not None:
                raise AssertionError(
                    f"the job ended (status {proc.returncode}) before {n} markers appeared: "
                    f"{(proc.stderr.read() if proc.stderr else '')[-3000:]}"
                )
            if time.monotonic() - start > STARTUP_TIMEOUT_S:
                raise AssertionError(f"no {n} markers {pattern} under {watch} after {STARTUP_TIMEOUT_S} s")
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the job exited with {proc.returncode} before the kill"
    return Kill(found, time.monotonic() - start)


CRASH_SITE = Path(__file__).resolve().parent / "crashsite"


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed: the ``n``-th atomic write to a path matching ``glob``, ``inside`` the
    write (temp file written, not renamed) or ``after`` it (see tests/crashsite/sitecustomize.py)."""

    name: str
    glob: str
    phase: str
    n: int = 2


# The write points every shard job passes through: its staged outputs, its stats, its marker.
SHARD_KILL_POINTS = (
    KillPoint("output-inside", "*/.staging/*", "inside"),
    KillPoint("stats-inside", "*/_stats/*.json", "inside"),
    KillPoint("marker-inside", "*/_done/*.done", "inside"),
    KillPoint("marker-after", "*/_done/*.done", "after", n=3),
)


def kill_at(args: Sequence[str], point: KillPoint, scratch: Path, timeout: float = 300) -> None:
    """Run the command until it reaches ``point``, where it SIGKILLs its own process group."""
    scratch.mkdir(parents=True, exist_ok=True)
    counter = scratch / f"kill-{point.name}.count"
    counter.unlink(missing_ok=True)
    env = {
        **_env(),
        "PYTHONPATH": f"{CRASH_SITE}{os.pathsep}{ROOT}",
        "CURATION_KILL_AT": f"{point.glob}|{point.phase}|{point.n}",
        "CURATION_KILL_COUNTER": str(counter),
    }
    proc = subprocess.run(
        cli(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the job never reached kill point {point} (status {proc.returncode}, "
        f"{counter.stat().st_size if counter.exists() else 0} matching writes):\n{proc.stderr[-3000:]}"
    )


def _volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key.startswith("seconds") or key.endswith(("_seconds", "_per_s"))


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _volatile(str(k))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]


def files_under(root: Path, ignore: Sequence[str] = ()) -> list[str]:
    rels = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(r for r in rels if not any(fnmatch.fnmatch(r, g) for g in ignore))


def assert_no_partial_files(root: Path) -> None:
    """No staging folder content, no temp file of an atomic write, no half-written anything."""
    leftovers = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and (".staging" in p.parts or p.name.endswith(".tmp") or p.name.startswith(".tmp"))
    ]
    assert leftovers == [], f"partial files left in {root}: {leftovers[:10]}"


def assert_same_outputs(expected: Path, actual: Path, ignore: Sequence[str] = ()) -> list[str]:
    """Every output file of an uninterrupted run exists, and only those, with equal content."""
    want, got = files_under(expected, ignore), files_under(actual, ignore)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert got == want, f"files differ: missing {missing[:10]}, extra {extra[:10]}"
    for rel in want:
        a, b = expected / rel, actual / rel
        if rel.endswith(".parquet"):
            ta, tb = pq.read_table(a), pq.read_table(b)
            assert ta.equals(tb), f"{rel}: tables differ"
        elif rel.endswith(".tar"):
            ma, mb = tar_members(a), tar_members(b)
            assert ma == mb, f"{rel}: tar members differ"
            names = Counter(name for name, _ in mb)
            assert max(names.values(), default=1) == 1, f"{rel}: duplicated members"
        elif rel.endswith((".json", ".done")):  # completion markers are JSON too
            assert _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text())), f"{rel} differs"
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
    return want
