"""Benchmark: SemDeDup against the synthetic crawl's injected semantic copies, for a sweep of eps.

Needs a crawl with ``semantic_dup`` pairs (``curate synth OUT -c conf/synth/methods.yaml``), its pool,
and an embedding stage; ``--descriptor`` makes one with ``curate copydesc``'s settings when absent
(``layout``: the copy descriptor's 16x16 layout part alone, ``hist_weight: 0``). Runs the
``semdedup`` filter once (every eps is read off the same ``max_sim``) and prints, per eps, recall of
the semantic copies and the false drop rate (``curation.synth.truth.semdedup_figures``). Asserts
nothing.

    python bench/semdedup_quality.py --synth out/synth --pool out/pool --embeddings layout:layout --k 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from curation.core.pool import Pool  # noqa: E402
from curation.engines import run_job  # noqa: E402
from curation.filtering.copydesc import CopyDescConfig  # noqa: E402
from curation.filtering.copydesc_job import CopyDescJob  # noqa: E402
from curation.filtering.job import FilterJob  # noqa: E402
from curation.synth.truth import family_of, semdedup_figures  # noqa: E402

DESCRIPTORS = {
    "layout": {"column": "layout", "hist_weight": 0.0},
    "layout8": {"column": "layout8", "hist_weight": 0.0, "thumb": 8},
    "copydesc": {"column": "copydesc"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", type=Path, required=True)
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--embeddings", default="layout:layout", help="STAGE:COLUMN")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--eps", default="0.02,0.04,0.06,0.08,0.1,0.12,0.15,0.2")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    stage, column = args.embeddings.split(":")
    pool = Pool(args.pool)
    if stage in DESCRIPTORS and not pool.attributes_dir(stage).exists():
        run_job(CopyDescJob(args.pool, CopyDescConfig(**DESCRIPTORS[stage])), "local", workers=args.workers)
    eps = [float(e) for e in args.eps.split(",")]
    name = f"bench_semdedup_{stage}_k{args.k}"
    spec = {"kind": "semdedup", "embeddings": {"attribute": stage, "column": column}, "k": args.k, "eps": eps}
    run_job(FilterJob(args.pool, [spec], name), "local", workers=args.workers).funnel().check()
    table = pool.read_attributes(name)
    gt = pq.read_table(args.synth / "ground_truth.parquet")
    junk = dict(zip(gt["uid"].to_pylist(), gt["junk"].to_pylist(), strict=True))
    fam = family_of(gt)
    rows = [
        (u, m, n)
        for u, m, n in zip(
            table["uid"].to_pylist(),
            table["semdedup_max_sim"].to_pylist(),
            table["semdedup_nearest"].to_pylist(),
            strict=True,
        )
        if m is not None
    ]
    print(f"{args.embeddings}, k={args.k}: {len(rows)} samples searched")
    print(f"{'eps':>6}{'copies':>8}{'found':>7}{'recall':>8}{'false drops':>13}{'rate':>8}{'dropped':>9}")
    for e in eps:
        fig = semdedup_figures(
            [r[0] for r in rows], [r[2] if r[1] > 1 - e else None for r in rows], junk, fam
        )
        print(
            f"{e:>6g}{fig['semantic_copies']:>8}{fig['found']:>7}{fig['recall']:>8.1%}"
            f"{fig['false_drops']:>13}{fig['false_drop_rate']:>8.2%}{fig['dropped']:>9}"
        )


if __name__ == "__main__":
    main()
