"""Benchmark: exact top-k% over a score column spread across many parquet files.

Compares ``curate select`` (DuckDB, out of core: a few scans to fix the cut, then a streamed
output) with an in-memory numpy baseline on the same files (read uid + score with pyarrow, exact
top-k by ``argpartition`` with uid tie-breaking, or a full ``lexsort`` with ``--baseline sort``).
Each method runs in a fresh child process, which reports its time and peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``); both must return the identical uid array.

    python bench/select_topk.py --rows 100_000_000 --files 1000     # the target figure
    python bench/select_topk.py --rows 1_000_000 --files 100         # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curation.core.uidvec import hex_to_uids, sort_uids, uids_to_hex_array  # noqa: E402

SCORE = "clip_l14_similarity_score"


def generate(data: Path, rows: int, files: int, seed: int) -> None:
    """A DataComp-like metadata pool: uid + a float32 score (coarse enough to have ties, 0.1% NaN)."""
    marker = data / "_generated.json"
    spec = {"rows": rows, "files": files, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    data.mkdir(parents=True, exist_ok=True)
    for p in data.glob("*.parquet"):
        p.unlink()
    rng = np.random.default_rng(seed)
    per = rows // files
    start = time.perf_counter()
    for f in range(files):
        n = per + (1 if f < rows % files else 0)
        u = np.empty(n, dtype="u8,u8")
        u["f0"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        u["f1"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        s = np.round(rng.normal(0.25, 0.06, n), 5).astype(np.float32)
        s[rng.random(n) < 0.001] = np.nan
        table = pa.table({"uid": uids_to_hex_array(u), SCORE: s})
        pq.write_table(table, data / f"{f:05d}.parquet", compression="zstd")
    marker.write_text(json.dumps(spec))
    print(f"generated {rows:,} rows in {files} files in {time.perf_counter() - start:.1f} s", flush=True)


def run_curate(data: Path, fraction: float, memory_limit: str) -> np.ndarray:
    from curation.selection.run import SelectSpec, run_selection

    spec = SelectSpec(
        steps=[{"topk": {"score": SCORE, "fraction": fraction}}], duckdb={"memory_limit": memory_limit}
    )
    return run_selection(data, spec, work_dir=data.parent / f"{data.name}.work").subset.uids


def run_numpy(data: Path, fraction: float, full_sort: bool) -> np.ndarray:
    files = sorted(str(p) for p in data.glob("*.parquet"))
    table = pq.read_table(files, columns=["uid", SCORE])
    uids, _ = hex_to_uids(table["uid"])
    scores = table[SCORE].to_numpy()
    del table
    ok = ~np.isnan(scores)
    uids, scores = uids[ok], scores[ok]
    k = int(np.floor(fraction * len(scores) + 0.5))
    if full_sort:
        order = np.lexsort((uids["f1"], uids["f0"], -scores))[:k]
        return sort_uids(uids[order])
    part = np.argpartition(-scores, k - 1)[:k]
    t = scores[part].min()  # the k-th best score; rows tied at t go to the smaller uids
    better = uids[scores > t]
    tied = sort_uids(uids[scores == t])[: k - len(better)]
    return sort_uids(np.concatenate([better, tied]))


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.child == "curate":
        out = run_curate(args.data, args.fraction, args.memory_limit)
    else:
        out = run_numpy(args.data, args.fraction, args.child == "numpy-sort")
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()[:16]
    print(
        json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024, "selected": len(out), "digest": digest})
    )


def measure(method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--child", method, "--data", str(args.data),
        "--fraction", str(args.fraction), "--memory-limit", args.memory_limit,
    ]  # fmt: skip
    wall = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - wall
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=lambda s: int(float(s)), default=100_000_000)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=None, help="where the synthetic pool goes (default /tmp)")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit for curate select")
    ap.add_argument("--baseline", choices=["partition", "sort"], default="partition")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    args.data = args.data or Path(f"/tmp/bench_select_topk_{args.rows}_{args.files}")
    generate(args.data, args.rows, args.files, args.seed)
    baseline = "numpy-sort" if args.baseline == "sort" else "numpy"
    print(f"exact top {args.fraction:.0%} of {args.rows:,} scores in {args.files} parquet files "
          f"({os.cpu_count()} cores)", flush=True)  # fmt: skip
    results = {m: measure(m, args) for m in (baseline, "curate")}
    for m, r in results.items():
        print(
            f"{m:>12}: {r['seconds']:8.2f} s  peak RSS {r['peak_mib']:8.0f} MiB  "
            f"selected {r['selected']:,}  digest {r['digest']}",
            flush=True,
        )
    b, c = results[baseline], results["curate"]
    print(f"time ratio curate/{baseline}: {c['seconds'] / b['seconds']:.2f}x (target <= 2x); "
          f"memory ratio: {c['peak_mib'] / b['peak_mib']:.2f}x; curate peak {c['peak_mib'] / 1024:.2f} GiB "
          f"(target < 2 GiB); identical output: {b['digest'] == c['digest']}")  # fmt: skip


if __name__ == "__main__":
    main()
