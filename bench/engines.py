"""Benchmark: one CPU-bound shard stage on the local, Spark and Ray engines with 1 and 2 workers.

The stage is ``curate filter`` with language identification (fastText lid.176 on every caption),
caption length and image size over a synthetic metadata pool (parquet shards of varied captions).
For each engine and worker count it prints the engine's start-up (Spark session; Ray instance with
its worker processes; none for local) apart from the job's wall time (which includes each worker's
imports and fastText model, and for local and Spark the worker processes' own start), the speedup
of 2 workers over 1 on that engine, and the overhead of that engine against the local engine at the
same worker count (job time ratio). Every run writes into a fresh copy of the pool, so no shard is
skipped.

Before and after the engines it measures the machine's own ceiling: the speedup of 2 processes
over 1 on a pure-Python busy loop, and the load average. On a shared machine, what other users run
takes cores away: the engines cannot beat that ceiling, so compare each engine's speedup with it.
During each job it also measures the share of the machine's CPU time that other processes took
("others"; a row with more than a few percent there was measured on a busy machine) and that the
hypervisor of a virtual machine withheld ("steal", when its host is busy).

    nice -n 10 python bench/engines.py --shards 8 --rows 150000
    python bench/engines.py --shards 8 --rows 600000 --engines ray --repeat 2   # each pair twice
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curation.engines import get_engine, run_job  # noqa: E402
from curation.filtering.job import FilterJob  # noqa: E402
from tests.conftest import write_metadata_pool  # noqa: E402

FILTERS = [
    {"kind": "caption_length", "name": "caption", "min_words": 3, "min_chars": 6},
    {"kind": "image_size", "min_side": 32, "max_aspect": 3.0},
    {"kind": "language", "keep": ["en"], "min_score": 0.0},
]


WIDTHS = (8, 12, 9, 10, 9, 9, 11, 10, 8, 7)


def cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds the machine was busy, CPU seconds its hypervisor withheld (steal), and CPU seconds
    of this process and its descendants (itself, the live ones and the children it reaped)."""
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))
    me = psutil.Process()
    ours = sum(me.cpu_times()[:2])
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours += reaped.ru_utime + reaped.ru_stime
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ours += sum(child.cpu_times()[:2])
    return busy, getattr(machine, "steal", 0.0), ours


def run_once(pool: Path, work: Path, engine: str, workers: int) -> tuple[float, float, int, float, float]:
    """(start-up seconds, job seconds, rows seen, shares of the machine's CPU time during the job that
    other processes took and that the hypervisor withheld) of one run into a fresh copy of ``pool``."""
    copy = work / f"{engine}-{workers}"
    shutil.copytree(pool, copy)
    eng = get_engine(engine, workers=workers)
    try:
        t0 = time.perf_counter()
        eng.start()
        t1 = time.perf_counter()
        busy0, steal0, ours0 = cpu_seconds()
        report = run_job(FilterJob(copy, FILTERS), eng)
        busy1, steal1, ours1 = cpu_seconds()
        t2 = time.perf_counter()
    finally:
        eng.close()
        shutil.rmtree(copy, ignore_errors=True)
    if report.failed:
        first = report.failed[0]
        raise SystemExit(f"{engine} x{workers}: shard {first.shard} failed: {first.error}")
    capacity = (t2 - t1) * (os.cpu_count() or 1)
    others = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / capacity
    return t1 - t0, t2 - t1, report.stats[0].total.seen, others, (steal1 - steal0) / capacity


def _spin(seconds: float) -> int:
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def ceiling(seconds: float = 4.0) -> float:
    """Speedup of 2 busy processes over 1 on this machine now (2.0 on two idle cores)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        one = pool.apply(_spin, (seconds,))
        two = sum(pool.starmap(_spin, [(seconds,), (seconds,)]))
    return two / one


def worker_start(pool: Path) -> float:
    """Seconds a fresh Python process takes to import the stage and set it up (the fastText model)."""
    code = (
        "import json, sys, time; t = time.perf_counter(); sys.path.insert(0, sys.argv[1]); "
        "from curation.filtering.job import FilterJob; "
        "FilterJob(sys.argv[2], json.loads(sys.argv[3])).setup(); print(time.perf_counter() - t)"
    )
    args = [sys.executable, "-c", code, str(ROOT), str(pool), json.dumps(FILTERS)]
    done = subprocess.run(args, capture_output=True, text=True)
    return float(done.stdout.strip() or "nan")


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load}; 2-process ceiling {ceiling():.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=150_000, help="rows per shard")
    ap.add_argument("--engines", default="local,spark,ray")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each engine's 1- and 2-worker pair")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        work = Path(tmp)
        pool = write_metadata_pool(work / "pool", n_shards=args.shards, per_shard=args.rows)
        print(f"pool: {args.shards} shards x {args.rows} rows; stage: filter (language id, caption, size)")
        print(f"machine before: {machine()}", flush=True)
        print(f"worker start (imports + fastText model, paid by every worker): {worker_start(pool):.1f} s")
        times: dict[tuple[str, int], float] = {}
        head = (
            "engine",
            "workers",
            "start-up s",
            "job s",
            "rows/s",
            "speedup",
            "ceiling",
            "of ceiling",
            "vs local",
            "others",
            "steal",
        )
        print(f"{head[0]:<8}" + "".join(f"{h:>{w}}" for h, w in zip(head[1:], WIDTHS, strict=True)))
        for engine in [e for e in engines for _ in range(args.repeat)]:
            for workers in (1, 2):
                top = ceiling(3.0) if workers == 2 else 0.0  # what 2 processes get from the machine now
                startup, seconds, rows, others, steal = run_once(pool, work, engine, workers)
                times[(engine, workers)] = seconds
                gain = times[(engine, 1)] / seconds
                speedup, limit, share = (
                    (f"{gain:.2f}x", f"{top:.2f}x", f"{gain / top:.0%}") if workers == 2 else ("", "", "")
                )
                local = times.get(("local", workers))
                overhead = f"{seconds / local:.2f}x" if local else ""
                print(
                    f"{engine:<8}{workers:>8}{startup:>12.1f}{seconds:>9.1f}{rows / seconds:>10.0f}"
                    f"{speedup:>9}{limit:>9}{share:>11}{overhead:>10}{others:>8.0%}{steal:>7.0%}",
                    flush=True,
                )
        print(f"machine after: {machine()}")
    print("speedup: 1-worker job time / 2-worker job time on the same engine; ceiling: the 2-process "
          "speedup of a busy loop measured just before; of ceiling: speedup / ceiling; "
          "vs local: job time / local job time at the same worker count (start-up not included); "
          "others: share of the machine's CPU time during the job that processes outside this run "
          "used (above a few percent, the row measured a busy machine); steal: share its hypervisor "
          "withheld")  # fmt: skip


if __name__ == "__main__":
    main()
