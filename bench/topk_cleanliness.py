"""Is the top-k by the reference score cleaner than the pool, and than a random subset of the same size?

    python bench/topk_cleanliness.py --pool POOL --synth SYNTH_OUT --score clip_score_ref:clip_score_ref \
        [--filters synthetic] [--seed 0] [--json OUT.json]

``POOL`` is the downloaded synthetic crawl, scored by ``curate score`` (``--score`` names the
attribute stage and column, ``stage:column``); ``SYNTH_OUT`` is what ``curate synth`` wrote
(``ground_truth.parquet``). With ``--filters`` the candidates are the samples every filter of that
``curate filter`` stage kept. Top-k and the random control are drawn by ``curate select``'s own
``topk`` and ``random`` steps; "clean" is defined in :mod:`curation.synth.truth`. Prints figures,
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.synth.truth import topk_cleanliness

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, required=True)
    ap.add_argument("--synth", type=Path, required=True)
    ap.add_argument("--score", required=True, help="stage:column of the reference score")
    ap.add_argument("--filters", default=None, help="filter stage whose kept samples are the candidates")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random control")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    gt = pq.read_table(args.synth / "ground_truth.parquet")
    t = time.perf_counter()
    rows = topk_cleanliness(args.pool, gt, args.score, FRACTIONS, args.filters, args.seed)
    seconds = time.perf_counter() - t
    candidates = f"kept by {args.filters}" if args.filters else "the whole pool"
    print(f"candidates: {candidates}; score {args.score}; random control seed {args.seed}")
    print(f"{'top k':>6} {'n':>6} {'clean top-k':>12} {'clean random':>13} {'difference':>11}")
    for r in rows:
        top, rand = r["clean_topk"], r["clean_random"]
        print(f"{r['k']:>6.0%} {r['n']:>6} {top:>12.3f} {rand:>13.3f} {top - rand:>+11.3f}")
    print(f"({seconds:.1f} s, {2 * len(rows)} selections)")
    if args.json:
        figures = {"score": args.score, "filters": args.filters, "seed": args.seed, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
