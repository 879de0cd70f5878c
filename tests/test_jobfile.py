"""``curate run JOB.yaml``: the shipped job files run end to end, resume, and reject bad jobs clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.core.config import CONF_DIR, ConfigError
from curation.core.subset import Subset
from curation.engines import engine_from_options, get_engine
from pipelines.app import app
from tests.conftest import write_metadata_pool
from tests.image_pool import write_image_pool
from tests.test_scoring import save_tiny_checkpoint
from workflows.jobfile import load_job, run_job_file

DATACOMP = CONF_DIR / "pipelines" / "datacomp_small.yaml"
DEMO = CONF_DIR / "pipelines" / "demo.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


def synthetic_sets(ckpt: Path) -> list[str]:
    """datacomp_small on a pool of small images, scored by a tiny local model."""
    return [
        "vars.filters=${conf}/filters/synthetic.yaml",
        "vars.model=tiny-vit",
        f"vars.pretrained={ckpt}",
        "steps.1.with.settings.device=cpu",
        "steps.1.with.settings.loader_workers=0",
    ]


def test_datacomp_small_runs_on_an_image_pool_and_a_rerun_redoes_only_a_lost_shard(tmp_path, ckpt):
    write_image_pool(tmp_path / "pool", n_shards=3, per_shard=20, failed_every=7)
    job = load_job(DATACOMP, [f"workdir={tmp_path}", *synthetic_sets(ckpt)])
    local = get_engine("local")
    runs = run_job_file(job, local)
    assert [(r.label, r.status) for r in runs] == [
        (s, "done") for s in ("filter", "score", "select", "reshard", "card")
    ]
    subset = Subset.load(tmp_path / "subsets" / "basic_clip30.npy")
    kept_by_filters = list(runs[0].summary.values())[-1]["kept"]  # the last filter sees what others kept
    (topk,) = [d for d in runs[2].summary["decisions"] if d["kind"] == "topk"]
    assert 0 < len(subset) == topk["cut"]["k"] < topk["candidates"] == kept_by_filters
    sizes = (tmp_path / "shards" / "sizes.json").read_text()
    assert str(len(subset)) in sizes
    assert (tmp_path / "card" / "card.html").exists()

    # a worker died on shard 00001 of the score step: its output and marker are gone
    scores = tmp_path / "pool" / "attributes" / "clip_score"
    kept_files = {p: p.stat().st_mtime_ns for p in (scores / "00000.parquet", scores / "00002.parquet")}
    (scores / "00001.parquet").unlink()
    (scores / "_done" / "00001.done").unlink()
    (tmp_path / "_job" / "01-score.done.json").unlink()
    again = run_job_file(job, local)
    assert [r.status for r in again] == ["skipped", "done", "skipped", "skipped", "skipped"]
    assert (scores / "00001.parquet").exists()
    assert {p: p.stat().st_mtime_ns for p in kept_files} == kept_files  # finished shards untouched


def test_datacomp_small_runs_on_a_metadata_pool_with_its_own_scores(tmp_path):
    pool = write_metadata_pool(tmp_path / "pool")
    for path in sorted(pool.glob("*.parquet")):
        t = pq.read_table(path)
        rng = np.random.default_rng(len(t))
        pq.write_table(t.append_column("clip_l14_similarity_score", pa.array(rng.random(len(t)))), path)
    job = load_job(DATACOMP, [f"workdir={tmp_path}", "vars.score=clip_l14_similarity_score"])
    runs = run_job_file(job, get_engine("local"), skip=["score", "reshard"])
    assert [r.status for r in runs] == ["done", "left out", "done", "left out", "done"]
    (topk,) = [d for d in runs[2].summary["decisions"] if d["kind"] == "topk"]
    assert len(Subset.load(tmp_path / "subsets" / "basic_clip30.npy")) == topk["cut"]["k"] > 0


@pytest.mark.slow
def test_the_demo_job_generates_serves_downloads_and_curates(tmp_path, ckpt):
    """The demo's job on a small crawl (its reference model and ablation are left out: minutes of CPU)."""
    sets = [
        f"workdir={tmp_path}",
        f"vars.checkpoint={ckpt}",
        "steps.0.with.set=[n_pairs=600, workers=1, suite.per_class=1, suite.retrieval_pairs=1, seed_set.n=1, "
        "imagenet.per_class=1]",
        "steps.1.with.set=[downloader.processes_count=1, downloader.thread_count=16]",
        "steps.4.with.settings.model=tiny-vit",
        "steps.4.with.settings.loader_workers=0",
    ]
    left_out = ["reference_model", "reference_eval", "ablation"]
    runs = run_job_file(load_job(DEMO, sets), get_engine("local"), skip=left_out)
    status = {r.label: r.status for r in runs}
    methods = ("semdedup", "lowlevel", "train_head", "score_head", "semdedup_top30", "metaclip_balanced")
    done = (
        "synth",
        "download",
        "score",
        "copydesc",
        "filter",
        *methods,
        "quality_top30",
        "hardmatch",
        "cards",
    )
    assert status == {**{s: "done" for s in done}, **{s: "left out" for s in left_out}}
    assert runs[1].summary["download"]["seen"] == 600
    kept_by_filters = list(runs[6].summary.values())[-1]["kept"]
    hardmatch = Subset.load(tmp_path / "sets" / "hardmatch" / "hardmatch.npy")
    assert 0 < len(hardmatch) <= runs[1].summary["download"]["kept"] and kept_by_filters > 0
    assert runs[-1].summary["cards"] == ["hardmatch"]
    assert 0 < len(Subset.load(tmp_path / "sets" / "semdedup_top30.npy")) < kept_by_filters
    assert (tmp_path / "cards" / "hardmatch" / "README.md").exists()


def test_bad_jobs_fail_before_anything_runs(tmp_path):
    local = get_engine("local")
    with pytest.raises(ConfigError, match="unknown stage 'scor'"):
        run_job_file(load_job(DATACOMP, [f"workdir={tmp_path}", "steps.1.stage=scor"]), local)
    with pytest.raises(ConfigError, match=r"\$\{nope\} is not in vars"):
        run_job_file(load_job(DATACOMP, [f"workdir={tmp_path}", "steps.0.with.pool=${nope}"]), local)
    with pytest.raises(ConfigError, match="unknown key"):
        run_job_file(load_job(DATACOMP, [f"workdir={tmp_path}", "steps.0.with.poool=x"]), local)
    with pytest.raises(ConfigError, match="must be unique"):
        run_job_file(load_job(DATACOMP, [f"workdir={tmp_path}", "steps.1.name=filter"]), local)
    with pytest.raises(ConfigError, match="no such step"):
        run_job_file(load_job(DATACOMP, [f"workdir={tmp_path}"]), local, skip=["scoring"])
    assert not (tmp_path / "_job").exists()


def test_attach_options_belong_to_their_engine():
    with pytest.raises(ValueError, match="--master attaches the spark engine"):
        engine_from_options("ray", master="spark://h:7077")
    with pytest.raises(ValueError, match="--address attaches the ray engine"):
        engine_from_options("local", address="auto")
    assert engine_from_options("spark", 2, master="spark://h:7077").master == "spark://h:7077"  # type: ignore[attr-defined]


def test_dry_run_lists_resolved_steps_and_runs_nothing(tmp_path):
    args = ["run", str(DATACOMP), "--dry-run", "--set", f"workdir={tmp_path}", "--set", "vars.pool=/data/p"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "score (score): to run" in result.output
    assert "pool: /data/p" in result.output and "conf/filters/datacomp_basic.yaml" in result.output
    assert not (tmp_path / "_job").exists()


def test_cli_reports_a_missing_pool_and_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["run", str(DATACOMP), "--set", f"workdir={tmp_path}", "--skip", "card"])
    assert result.exit_code == 2, result.output
    assert "pool directory not found" in result.output


def test_download_distributor_follows_the_engine():
    from curation.download import CrawlError, DownloadConfig
    from curation.download.run import with_distributor

    cfg = DownloadConfig()
    got = {
        name: with_distributor(cfg, get_engine(name).distributor).downloader.distributor
        for name in ("local", "spark", "ray")
    }
    assert got == {"local": "multiprocessing", "spark": "pyspark", "ray": "ray"}
    pinned = DownloadConfig.model_validate({"downloader": {"distributor": "pyspark"}})
    assert with_distributor(pinned, "pyspark").downloader.distributor == "pyspark"
    with pytest.raises(CrawlError, match="choose the distributor with --engine"):
        with_distributor(pinned, "multiprocessing")
