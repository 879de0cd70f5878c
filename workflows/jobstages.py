"""The stages a job file (:mod:`workflows.jobfile`) may name: thin adapters over the stage functions.

Each stage calls exactly what its ``curate`` subcommand calls, with the job's engine, so a job and
the commands typed by hand produce the same files. Paths in a stage's ``with`` are relative to the
job's workdir; ``config``/``settings``/``set`` are the stage's own config (see ``StageSettings``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import Field

from curation.core.config import CONF_DIR, ConfigError
from curation.engines import JobReport, run_job
from workflows.jobfile import JobContext, StageSettings, StepFailed, job_stage

log = logging.getLogger(__name__)


def funnel_summary(report: JobReport) -> dict[str, Any]:
    """What a step's marker records: per stage, samples seen and kept."""
    return {s.stage: {"seen": s.total.seen, "kept": s.total.kept} for s in report.stats}


class SynthSettings(StageSettings):
    out: Path = Path("synth")


@job_stage("synth", SynthSettings)
def synth_stage(s: SynthSettings, ctx: JobContext) -> dict[str, Any]:
    """Generate the synthetic crawl, web and evaluation suite (written atomically: present = complete)."""
    from curation.synth import SynthConfig, generate

    out = ctx.path(s.out)
    cfg = s.build(SynthConfig, ctx, CONF_DIR / "synth" / "default.yaml")
    if out.exists():
        log.info("%s exists (a finished generation); kept", out)
        return {"out": str(out), "reused": True}
    generate(cfg, out)
    return {"out": str(out), "pairs": cfg.n_pairs}


class DownloadSettings(StageSettings):
    crawl: Path = Field(description="Crawl parquet file or folder (url, caption/text, uid, source).")
    out: Path = Path("pool")
    serve: Path | None = Field(
        None, description="A synthetic crawl folder: serve its web on 127.0.0.1 and fetch from there."
    )


@contextmanager
def served_crawl(synth: Path, crawl: Path, local_crawl: Path) -> Iterator[Path]:
    """Serve ``synth``'s web on a free 127.0.0.1 port; yields ``crawl`` rewritten to point at it."""
    from curation.synth import rebase_urls, serve

    with serve(synth, "127.0.0.1", 0) as server:
        pq.write_table(rebase_urls(pq.read_table(crawl), server.base_url), local_crawl)
        yield local_crawl


@job_stage("download", DownloadSettings)
def download_stage(s: DownloadSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.download import DownloadConfig, download_crawl

    cfg = s.build(DownloadConfig, ctx, CONF_DIR / "download" / "default.yaml")
    crawl, pool = ctx.path(s.crawl), ctx.path(s.out)
    if s.serve is None:
        return funnel_summary(ctx.check(download_crawl(crawl, pool, cfg, ctx.engine)))
    with served_crawl(ctx.path(s.serve), crawl, ctx.workdir / "crawl_local.parquet") as local:
        return funnel_summary(ctx.check(download_crawl(local, pool, cfg, ctx.engine)))


class ReferenceModelSettings(StageSettings):
    seed: Path = Field(Path("synth/seed"), description="Clean seed shards.")
    out: Path = Path("reference")
    preset: str = "tiny"
    samples_seen: int | None = None
    train_seed: int = 0
    device: str = "auto"


@job_stage("reference_model", ReferenceModelSettings)
def reference_model_stage(s: ReferenceModelSettings, ctx: JobContext) -> dict[str, Any]:
    """Train the reference CLIP on the seed set (as ``curate reference-model``); resumes its own run."""
    from trainer.presets import load_preset
    from trainer.train import TrainRequest, train

    if s.settings:
        raise ConfigError("reference_model: preset changes go in `config` (a partial preset YAML) or `set`")
    preset_file = ctx.config_path(s.config) if s.config else None
    req = TrainRequest(
        shards=ctx.path(s.seed),
        out=ctx.path(s.out),
        preset=load_preset(s.preset, preset_file, s.set),
        mode="equal_samples",
        samples_seen=s.samples_seen,
        seed=s.train_seed,
        device=s.device,
    )
    run = train(req)
    return {"model": run.model, "checkpoint": str(run.checkpoint)}


class ScoreSettings(StageSettings):
    pool: Path = Path("pool")


@job_stage("score", ScoreSettings)
def score_stage(s: ScoreSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.scoring import ScoreConfig, score_pool

    cfg = s.build(ScoreConfig, ctx, CONF_DIR / "score" / "default.yaml")
    return funnel_summary(ctx.check(score_pool(ctx.path(s.pool), cfg, ctx.engine)))


class CopyDescSettings(StageSettings):
    pool: Path = Path("pool")


@job_stage("copydesc", CopyDescSettings)
def copydesc_stage(s: CopyDescSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.filtering.copydesc import CopyDescConfig
    from curation.filtering.copydesc_job import CopyDescJob

    cfg = s.build(CopyDescConfig, ctx, CONF_DIR / "copydesc" / "default.yaml")
    return funnel_summary(ctx.check(run_job(CopyDescJob(ctx.path(s.pool), cfg), ctx.engine)))


class FilterSettings(StageSettings):
    pool: Path = Path("pool")


@job_stage("filter", FilterSettings)
def filter_stage(s: FilterSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.filtering.job import FilterJob
    from pipelines.filter import FilterJobConfig

    cfg = s.build(FilterJobConfig, ctx, CONF_DIR / "filters" / "basic.yaml")
    return funnel_summary(ctx.check(run_job(FilterJob(ctx.path(s.pool), cfg.filters, cfg.name), ctx.engine)))


class SelectSettings(StageSettings):
    pool: Path = Path("pool")
    out: Path = Field(description="Subset .npy to write (manifest .json and funnel beside it).")


@job_stage("select", SelectSettings)
def select_stage(s: SelectSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.selection.run import SelectSpec, clean_work_dir, run_selection, save_selection

    spec = s.build(SelectSpec, ctx)
    out = ctx.path(s.out).with_suffix(".npy")
    work = out.parent / f".{out.stem}.select-work"
    result = run_selection(ctx.path(s.pool), spec, work_dir=work, engine=ctx.engine)
    path = save_selection(result, out)
    clean_work_dir(work)
    return {"subset": str(path), "uids": len(result.subset), "decisions": result.decisions}


class HardmatchSettings(StageSettings):
    input: Path = Path("pool")
    out: Path = Path("sets/hardmatch")
    ground_truth: Path | None = None


@job_stage("hardmatch", HardmatchSettings)
def hardmatch_stage(s: HardmatchSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.builders.hardmatch import HardmatchConfig, run_hardmatch

    cfg = s.build(HardmatchConfig, ctx, CONF_DIR / "hardmatch" / "imagenet.yaml")
    truth = ctx.path(s.ground_truth) if s.ground_truth else None
    report, _ = run_hardmatch(ctx.path(s.input), cfg, ctx.path(s.out), ctx.engine, ground_truth=truth)
    return funnel_summary(ctx.check(report))


class ReshardSettings(StageSettings):
    pool: Path = Path("pool")
    subset: Path
    out: Path
    labels: Path | None = None


@job_stage("reshard", ReshardSettings)
def reshard_stage(s: ReshardSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.reshard.run import ReshardConfig, run_reshard

    cfg = s.build(ReshardConfig, ctx)
    labels = ctx.path(s.labels) if s.labels else None
    pool, subset, out = ctx.path(s.pool), ctx.path(s.subset), ctx.path(s.out)
    result = run_reshard(pool, subset, out, cfg, labels, engine=ctx.engine)
    for report in result.reports:
        ctx.check(report)
    if not result.complete:
        raise StepFailed(f"reshard into {result.out} did not finish; rerun to resume")
    return {"out": str(result.out), "shards": result.plan["shards"], "stats": result.plan["stats"]}


class CardSettings(StageSettings):
    subset: Path
    out: Path
    pool: Path | None = None
    results: Path | None = None


@job_stage("card", CardSettings)
def card_stage(s: CardSettings, ctx: JobContext) -> dict[str, Any]:
    from curation.cards.card import write_card
    from curation.cards.data import load_card_data
    from curation.core.pool import Pool

    if s.config or s.settings or s.set:
        raise ConfigError("card: takes no config (a card is made from recorded stats only)")
    pool = ctx.path(s.pool) if s.pool else None
    data = load_card_data(ctx.path(s.subset), pool, ctx.path(s.results) if s.results else None)
    readme, html = write_card(data, Pool(pool or Path(data.subset.manifest["pool"])), ctx.path(s.out))
    return {"readme": str(readme), "html": str(html)}


class AblateSettings(StageSettings):
    out: Path = Path("ablation")


@job_stage("ablate", AblateSettings)
def ablate_stage(s: AblateSettings, ctx: JobContext) -> dict[str, Any]:
    """The ablation grid (select, reshard, train, evaluate, report); its cells resume on a rerun."""
    from workflows.ablation import AblationConfig, run_ablation

    cfg = s.build(AblationConfig, ctx, CONF_DIR / "ablation" / "default.yaml")
    result = run_ablation(cfg, ctx.path(s.out))
    if result.failed:
        raise StepFailed(f"ablation: {len(result.failed)} of {len(result.cells)} cell(s) failed; rerun")
    return {"cells": len(result.cells), "report": str(ctx.path(s.out) / "report.html")}
