"""Appending a crawl slice to a curated pool versus curating the union from scratch.

Generates a synthetic crawl (or reuses ``--synth DIR``), serves it on 127.0.0.1 and splits it: a
base of 90% of the pairs and a slice of the other 10% plus a few base pairs (which the append must
skip). Then, with the demo's stages (download, tiny reference CLIP score, copy descriptors, the
demo's filters with exact and near dedup, a filtered set and a top-30% set):

1. base pool: the whole pipeline on the base (not timed);
2. append: ``download --append`` the slice into the base pool, then the same stages (timed): the
   per-shard stages find the base shards done and process only the new ones; dedup and top-k
   are recomputed over the union (the filter refreshes only the dedup verdicts of old shards
   whose dedup lookups changed);
3. fresh: the whole pipeline on the full crawl into a new pool (timed).

Prints per-stage seconds, the append's time as a fraction of the fresh run's (target <= 0.25),
and whether both subsets are byte-identical between the appended pool and the fresh one.
Usage (from the repository root):
    python -m bench.incremental --pairs 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core.config import CONF_DIR, load_config

SCORE = "clip_score_tiny_vit"
SUBSETS: dict[str, list[dict[str, Any]]] = {
    "filtered": [{"filter": {"stage": "demo"}}],
    "top30": [{"filter": {"stage": "demo"}}, {"topk": {"score": f"{SCORE}:{SCORE}", "fraction": 0.3}}],
}


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A seeded random tiny CLIP: the same weights in every run, so scores are comparable."""
    import open_clip
    import torch

    from curation.core.models import register_project_models

    register_project_models()
    torch.manual_seed(seed)
    torch.save({"state_dict": open_clip.create_model("tiny-vit").state_dict()}, path)
    return path


def curate(
    crawl: Path,
    pool: Path,
    ckpt: Path,
    sets: Path,
    append: bool = False,
    download_sets: list[str] | None = None,
) -> dict[str, float]:
    """Download (or append) ``crawl`` into ``pool``, score, copydesc, filter, select; seconds per stage."""
    from curation.download import DownloadConfig, download_crawl
    from curation.engines import run_job
    from curation.filtering.copydesc import CopyDescConfig
    from curation.filtering.copydesc_job import CopyDescJob
    from curation.filtering.job import FilterJob, FilterJobConfig
    from curation.scoring import ScoreConfig, score_pool
    from curation.selection.run import SelectSpec, run_selection, save_selection

    download = load_config(DownloadConfig, CONF_DIR / "download" / "synthetic.yaml", download_sets or [])
    score = ScoreConfig.model_validate(
        {"model": "tiny-vit", "pretrained": str(ckpt), "device": "cpu", "batch_size": 64, "loader_workers": 1}
    )
    filters = load_config(FilterJobConfig, CONF_DIR / "filters" / "demo.yaml")
    copydesc = load_config(CopyDescConfig, CONF_DIR / "copydesc" / "default.yaml")
    seconds: dict[str, float] = {}

    def timed(name: str, run: Callable[[], Any]) -> None:
        start = time.perf_counter()
        report = run()
        seconds[name] = time.perf_counter() - start
        if getattr(report, "failed", None):
            raise RuntimeError(f"{name}: shards failed: {[o.shard for o in report.failed]}")
        if hasattr(report, "outcomes"):
            seconds[f"{name} shards run"] = sum(o.status == "done" for o in report.outcomes)

    before = {p.name for p in pool.glob("*_stats.json")}
    started = time.time()
    timed("download", lambda: download_crawl(crawl, pool, download, append=append))
    new = [json.loads(p.read_text()) for p in pool.glob("*_stats.json") if p.name not in before]
    seconds["img2dataset start-up"] = min(s["start_time"] for s in new) - started if new else 0.0
    timed("score", lambda: score_pool(pool, score))
    timed("copydesc", lambda: run_job(CopyDescJob(pool, copydesc)))
    timed("filter", lambda: run_job(FilterJob(pool, filters.filters, filters.name)))
    for name, steps in SUBSETS.items():
        spec = SelectSpec(name=name, steps=steps)
        timed(
            f"select {name}",
            lambda spec=spec, name=name: save_selection(run_selection(pool, spec), sets / f"{name}.npy"),
        )
    return seconds


def split_crawl(crawl: pa.Table, fraction: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """A base and a slice: ``fraction`` of the rows, plus 1% of the base again (already in the pool)."""
    rng = np.random.default_rng(seed)
    in_slice = rng.random(crawl.num_rows) < fraction
    again = ~in_slice & (rng.random(crawl.num_rows) < 0.01)
    return crawl.filter(pa.array(~in_slice)), crawl.filter(pa.array(in_slice | again))


def _bytes(sets: Path, name: str) -> bytes:
    return (sets / f"{name}.npy").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--synth", type=Path, help="an existing `curate synth` output to reuse")
    parser.add_argument("--keep", type=Path, help="keep the pools here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as tmp_name:
        tmp = args.keep or Path(tmp_name)
        result = run(tmp, args.pairs, args.fraction, args.synth)
    report(result)


TIMES = ("download", "score", "copydesc", "filter", "select filtered", "select top30")


def report(result: dict[str, Any]) -> None:
    a, f = result["append"], result["fresh"]
    print(f"{'stage':<22}{'append s':>10}{'fresh s':>10}{'ratio':>8}   shards run (append / fresh)")
    for stage in (*TIMES, "img2dataset start-up"):
        key = f"{stage} shards run"
        runs = f"{a[key]:.0f} / {f[key]:.0f}" if key in a else ""
        ratio = a[stage] / f[stage] if f[stage] else float("nan")
        print(f"{stage:<22}{a[stage]:>10.1f}{f[stage]:>10.1f}{ratio:>8.2f}   {runs}")
    total_a, total_f = sum(a[s] for s in TIMES), sum(f[s] for s in TIMES)
    fixed_a, fixed_f = total_a - a["img2dataset start-up"], total_f - f["img2dataset start-up"]
    print(f"{'total':<22}{total_a:>10.1f}{total_f:>10.1f}{total_a / total_f:>8.2f}")
    print(f"{'total w/o start-up':<22}{fixed_a:>10.1f}{fixed_f:>10.1f}{fixed_a / fixed_f:>8.2f}")
    print(f"append / fresh: {total_a / total_f:.3f} (target <= 0.25); without img2dataset's fixed start-up "
          f"(a spawned worker importing img2dataset): {fixed_a / fixed_f:.3f}")  # fmt: skip
    print(f"slice: {result['slice_rows']} rows, {result['skipped']} already in the pool; "
          f"pool shards: {result['shards']}")  # fmt: skip
    for name, same in result["identical"].items():
        print(f"subset {name}: {result['sizes'][name]} uids, byte-identical to the fresh run: {same}")


def run(tmp: Path, pairs: int, fraction: float, synth: Path | None = None) -> dict[str, Any]:
    from curation.core.pool import Pool
    from curation.synth import SynthConfig, generate, rebase_urls, serve

    if synth is None:
        synth = tmp / "synth"
        sets = [f"n_pairs={pairs}", "suite.per_class=1", "suite.retrieval_pairs=1", "seed_set.n=1",
                "imagenet.per_class=1", "slow_delay_s=0.1"]  # fmt: skip
        generate(load_config(SynthConfig, CONF_DIR / "synth" / "default.yaml", sets), synth)
    ckpt = tiny_checkpoint(tmp / "tiny.pt")
    one_process = [
        "downloader.processes_count=1",
        "downloader.thread_count=32",
        "number_sample_per_shard=200",
    ]
    with serve(synth) as server:
        crawl = rebase_urls(pq.read_table(synth / "crawl.parquet"), server.base_url)
        base, piece = split_crawl(crawl, fraction)
        for name, table in (("crawl", crawl), ("base", base), ("slice", piece)):
            pq.write_table(table, tmp / f"{name}.parquet")
        curate(tmp / "base.parquet", tmp / "appended", ckpt, tmp / "sets_base", download_sets=one_process)
        appended = curate(
            tmp / "slice.parquet", tmp / "appended", ckpt, tmp / "sets_appended", True, one_process
        )
        fresh = curate(
            tmp / "crawl.parquet", tmp / "fresh", ckpt, tmp / "sets_fresh", download_sets=one_process
        )
    identical = {n: _bytes(tmp / "sets_appended", n) == _bytes(tmp / "sets_fresh", n) for n in SUBSETS}
    sizes = {n: len(np.load(tmp / "sets_fresh" / f"{n}.npy")) for n in SUBSETS}
    known = pc.is_in(piece["uid"], value_set=base["uid"])
    return {
        "append": appended, "fresh": fresh, "identical": identical, "sizes": sizes,
        "slice_rows": piece.num_rows, "skipped": pc.sum(known.cast(pa.int64())).as_py(),
        "shards": len(Pool(tmp / "appended").shard_ids()),
    }  # fmt: skip


if __name__ == "__main__":
    main()
