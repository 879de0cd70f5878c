"""Time the synthetic crawl generator: wall and CPU seconds for a few crawl sizes.

    python bench/bench_synth.py [--sizes 3000 20000] [--workers 0] [--full]

By default the held-out sets are shrunk to a token size so the figures are the crawl's own;
``--full`` keeps the default suite, seed set and ImageNet analogue. Prints one line per size and
the per-pair cost ratio against the smallest size (near 1.0: generation scales linearly).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.core.config import CONF_DIR, load_config
from curation.synth.build import generate
from curation.synth.config import SynthConfig

TOKEN_SETS = ["suite.per_class=1", "suite.retrieval_pairs=4", "seed_set.n=4", "imagenet.per_class=1"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 20000])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="also generate the default-size held-out sets")
    args = ap.parse_args()
    base = None
    for n in args.sizes:
        sets = [] if args.full else TOKEN_SETS
        cfg = load_config(
            SynthConfig,
            CONF_DIR / "synth" / "default.yaml",
            [f"n_pairs={n}", f"workers={args.workers}", *sets],
        )
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu, child = time.perf_counter(), time.process_time(), _children_cpu()
            manifest = generate(cfg, Path(tmp) / "out")
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu + _children_cpu() - child
        per_pair = wall / n
        base = base or per_pair
        extra = sum(manifest["suite"].values()) + manifest["seed_set"] + manifest["imagenet"]["train"]
        print(
            f"n_pairs={n:>6}  held-out images={extra:>5}  wall={wall:6.1f}s  cpu={cpu:6.1f}s  "
            f"{n / wall:6.0f} pairs/s  per-pair ratio vs first={per_pair / base:.2f}"
        )


if __name__ == "__main__":
    main()
