"""The top-k cleanliness measurement (curation.synth.truth.topk_cleanliness, bench/topk_cleanliness.py).

Training a reference CLIP takes minutes on CPU, so these tests score a small synthetic pool with
*noisy oracles*: scores made from the ground truth plus Gaussian noise (correlated with cleanliness
by construction), and pure noise (uncorrelated). They check the measurement (selection by
``curate select``'s top-k and random steps, sizes, the clean definition, the filter stage), not
the reference model; the reference model's figures are measured by the bench (docs/selection.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core.config import CONF_DIR, load_config
from curation.core.pool import Pool
from curation.engines import run_job
from curation.filtering.job import FilterJob, FilterJobConfig
from curation.synth.truth import clean_mask, topk_cleanliness
from tests.synth_pool import small_crawl, write_synth_pool

ROOT = Path(__file__).resolve().parent.parent
FRACTIONS = (0.2, 0.4, 1.0)


@pytest.fixture(scope="module")
def scored_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1,000-pair crawl's pool with two score stages, ``oracle`` (clean + noise) and ``noise``."""
    root = tmp_path_factory.mktemp("topk")
    synth = small_crawl(root / "synth", 1000)
    pool = write_synth_pool(synth, root / "pool", shard_size=400)
    gt = pq.read_table(synth / "ground_truth.parquet")
    clean = dict(zip(gt["uid"].to_pylist(), clean_mask(gt).tolist(), strict=True))
    rng = np.random.default_rng(0)
    for shard in Pool(pool).shard_ids():
        uids = Pool(pool).read_samples(shard)["uid"]
        is_clean = np.array([clean[u] for u in uids.to_pylist()], dtype=float)
        for stage, score in (
            ("oracle", is_clean + rng.normal(0.0, 0.7, len(is_clean))),
            ("noise", rng.normal(0.0, 1.0, len(is_clean))),
        ):
            out = pool / "attributes" / stage
            out.mkdir(parents=True, exist_ok=True)
            table = pa.table({"uid": uids, "score": score.astype(np.float32)})
            pq.write_table(table, out / f"{shard}.parquet")
    return synth, pool


def test_topk_by_a_correlated_score_is_cleaner_and_random_is_not(scored_pool):
    synth, pool = scored_pool
    gt = pq.read_table(synth / "ground_truth.parquet")
    rows = {r["k"]: r for r in topk_cleanliness(pool, gt, "oracle:score", FRACTIONS)}
    everything = rows[1.0]
    downloaded = sum(Pool(pool).read_samples(s).num_rows for s in Pool(pool).shard_ids())
    assert everything["n"] == downloaded
    assert everything["clean_topk"] == everything["clean_random"]  # the same set at k = 100%
    assert rows[0.4]["n"] == round(0.4 * downloaded)
    assert rows[0.4]["clean_topk"] > rows[0.4]["clean_random"] + 0.05
    assert rows[0.2]["clean_topk"] > rows[0.4]["clean_topk"]
    for k in (0.2, 0.4):
        assert abs(rows[k]["clean_random"] - everything["clean_topk"]) < 0.08  # a random draw is the pool


def test_an_uncorrelated_score_is_no_cleaner_than_random(scored_pool):
    synth, pool = scored_pool
    gt = pq.read_table(synth / "ground_truth.parquet")
    rows = {r["k"]: r for r in topk_cleanliness(pool, gt, "noise:score", FRACTIONS, seed=1)}
    assert abs(rows[0.4]["clean_topk"] - rows[0.4]["clean_random"]) < 0.06


def test_filter_stage_restricts_the_candidates_and_bench_prints_every_k(scored_pool, tmp_path):
    synth, pool = scored_pool
    cfg = load_config(FilterJobConfig, CONF_DIR / "filters" / "synthetic.yaml")
    run_job(FilterJob(pool, cfg.filters, cfg.name), "local").funnel().check()
    gt = pq.read_table(synth / "ground_truth.parquet")
    unfiltered = topk_cleanliness(pool, gt, "oracle:score", (1.0,))[0]
    filtered = topk_cleanliness(pool, gt, "oracle:score", (1.0,), filters="synthetic")[0]
    assert filtered["n"] < unfiltered["n"]
    assert filtered["clean_topk"] > unfiltered["clean_topk"]  # the filters drop junk
    out = tmp_path / "fig.json"
    argv = [sys.executable, str(ROOT / "bench" / "topk_cleanliness.py"), "--pool", str(pool)]
    argv += ["--synth", str(synth), "--score", "oracle:score", "--filters", "synthetic", "--json", str(out)]
    printed = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    for k in ("20%", "40%", "60%", "80%", "100%"):
        assert f"\n{k:>6} " in printed, printed
    assert out.exists()
