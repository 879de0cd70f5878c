"""``download_crawl``: plan, fetch what is missing with img2dataset, account for every crawl row.

Safe to rerun at any point: the plan is reused, img2dataset's incremental mode skips finished
shards (and the call is skipped entirely when none is missing), and the accounting units' markers
return the stats already on disk, so a rerun downloads nothing new and reports identical numbers.
``append`` adds a crawl's new rows as new shards; :func:`retry_failed` fetches again the rows whose
last attempt failed for a reason worth retrying (see :mod:`curation.download.retry`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from curation.core import storage
from curation.core.io import read_json
from curation.core.runner import marker_path
from curation.core.stats import Funnel, FunnelError, StageStats, merge
from curation.download.accounting import UNIT_PREFIX, DownloadAccounting, unit_name
from curation.download.config import DownloadConfig
from curation.download.fetch import guard_settings, img2dataset_arguments, run_img2dataset
from curation.download.plan import (
    CrawlError,
    DownloadPlan,
    check_settings,
    download_dir,
    fingerprint,
    input_dir,
    load_plan,
    prepare_plan,
)
from curation.download.retry import plan_retry
from curation.engines import Engine, JobReport, get_engine, run_job

log = logging.getLogger(__name__)

SHARD_FILES = ("{shard}.tar", "{shard}.parquet")  # img2dataset's objects of a shard, but its _stats.json
IMG2DATASET_TMP = "_tmp"  # img2dataset's per-shard inputs (feather); it removes them only off s3


def stats_files(pool: Path) -> list[Path]:
    """The download's per-unit stats (runner layout, ``{"stages": [StageStats]}``) in the pool."""
    storage.forget_listings(pool)  # Spark or Ray workers may have written them
    return storage.list_files(storage.location(pool) / "_stats", f"{UNIT_PREFIX}*.json")


def download_stats(pool: Path) -> StageStats:
    """The download funnel of a pool: its per-unit stats merged."""
    stages = merge(StageStats.from_dict(d) for p in stats_files(pool) for d in read_json(p)["stages"])
    if not stages:
        raise FileNotFoundError(
            f"{pool}: no download stats (_stats/{UNIT_PREFIX}*.json); run curate download"
        )
    return stages[0]


def download_crawl(
    crawl: Path, pool: Path, cfg: DownloadConfig, engine: Engine | str = "local", append: bool = False
) -> JobReport:
    """Download ``crawl`` (a parquet file or folder) into ``pool``; returns the accounting report.

    Both may be local paths or URLs (``s3://...``): img2dataset reads and writes through fsspec.

    ``append``: ``pool`` exists; only ``crawl``'s rows with uids it has not seen are fetched, into
    new shards.

    img2dataset distributes the shards itself; the engine picks its distributor (local:
    multiprocessing, spark: pyspark, ray: ray) and starts the cluster session it runs on, so the
    Spark or Ray that downloads is the one bound to 127.0.0.1 or attached to with --master/--address.
    """
    eng = get_engine(engine) if isinstance(engine, str) else engine
    try:
        cfg = with_distributor(cfg, eng.distributor)
        crawl, pool = storage.location(crawl), storage.location(pool)
        storage.check_bucket(crawl)  # a wrong endpoint, bucket or key: one clear error, now
        storage.check_bucket(pool, write=True)
        storage.ensure_dir(pool)
        plan = prepare_plan(crawl, pool, cfg, append=append)
        if not append:  # an appended slice may hold only uids the pool has: nothing to fetch, rightly
            _check_not_all_blocked(plan, pool, cfg)
        return _fetch_and_account(pool, plan, cfg, eng)
    finally:
        if isinstance(engine, str):
            eng.close()


def retry_failed(pool: Path, cfg: DownloadConfig, engine: Engine | str = "local") -> JobReport:
    """Finish ``pool``'s download, then fetch again its retriable failures as new shards."""
    pool = storage.location(pool)
    eng = get_engine(engine) if isinstance(engine, str) else engine
    try:
        cfg = with_distributor(cfg, eng.distributor)
        storage.check_bucket(pool, write=True)
        plan = load_plan(pool)
        check_settings(plan, fingerprint([], cfg)["settings"], pool)
        report = _fetch_and_account(pool, plan, cfg, eng)  # a pending shard first, as a rerun would
        if report.failed:
            return report
        part, units = plan_retry(pool, plan, cfg)
        if part is None:
            return report
        for unit in units:  # their retried rows are accounted for in the retry part now
            storage.remove(marker_path(pool, unit))
        return _fetch_and_account(pool, plan, cfg, eng)
    finally:
        if isinstance(engine, str):
            eng.close()


def with_distributor(cfg: DownloadConfig, distributor: str) -> DownloadConfig:
    """``cfg`` with img2dataset's distributor of the engine; a config naming another one is an error."""
    chosen = cfg.downloader.distributor
    if "distributor" in cfg.downloader.model_fields_set and chosen != distributor:
        raise CrawlError(
            f"downloader.distributor is {chosen!r} but the engine runs {distributor!r}; "
            "choose the distributor with --engine (local, spark, ray) and drop the setting"
        )
    downloader = cfg.downloader.model_copy(update={"distributor": distributor})
    return cfg.model_copy(update={"downloader": downloader})


def _fetch_and_account(pool: Path, plan: DownloadPlan, cfg: DownloadConfig, eng: Engine) -> JobReport:
    """Fetch the shards img2dataset has not finished, then account for every unit.

    img2dataset writes a shard's ``NNNNN.tar`` and ``NNNNN.parquet`` straight into the pool (on object
    storage each appears whole when its upload completes), then ``NNNNN_stats.json``; the accounting
    unit's objects, stats and ``_done`` marker come after. A shard without its ``_stats.json`` is
    pending: its accounting marker and whatever an interrupted attempt left of it are deleted before
    img2dataset writes it again (and once more if img2dataset gives up on it), so no stray object
    survives a killed or failed run.
    """
    finished = finished_shards(pool)
    pending = {s: plan.shard_rows(s) for s in plan.shard_ids() if s not in finished}
    job = DownloadAccounting(pool, plan)
    for shard in pending:  # a shard img2dataset (re)downloads must be accounted for again
        storage.remove(marker_path(job.output_dir(), unit_name(shard)))
        _remove_shard_files(pool, shard)
    if pending:
        d = cfg.downloader
        log.info(
            "downloading %d urls in %d shards with img2dataset (%d processes x %d threads)",
            sum(pending.values()), len(pending), d.processes_count, d.thread_count,
        )  # fmt: skip
        log_file = download_dir(pool) / "img2dataset.log" if d.output == "file" else None
        eng.start()  # before output is redirected, and so img2dataset finds the session
        storage.remove(pool / IMG2DATASET_TMP, recursive=True)  # a killed run's shard inputs
        run_img2dataset(
            img2dataset_arguments(input_dir(pool), pool, cfg), pending, log_file, guard_settings(cfg)
        )
        storage.remove(pool / IMG2DATASET_TMP, recursive=True)  # img2dataset leaves it on s3
        finished = finished_shards(pool)
        for shard in sorted(pending.keys() - finished):  # given up on: what a failed attempt left goes too
            _remove_shard_files(pool, shard)
    else:
        log.info("all %d shards of %s are downloaded already; nothing to fetch", len(plan.shard_ids()), pool)
    report = run_job(job, eng, retries=0)
    if not report.failed:
        _check_every_row_counted(report, plan)
    return report


def finished_shards(pool: Path) -> set[str]:
    """Shards img2dataset finished (its ``NNNNN_stats.json``, written last), from one fresh listing."""
    storage.forget_listings(pool)  # img2dataset's workers write from other processes
    return {p.name.removesuffix("_stats.json") for p in storage.list_files(pool, "*_stats.json")}


def _remove_shard_files(pool: Path, shard: str) -> None:
    for name in SHARD_FILES:
        storage.remove(storage.location(pool) / name.format(shard=shard))


def _check_not_all_blocked(plan: DownloadPlan, pool: Path, cfg: DownloadConfig) -> None:
    """A crawl none of whose urls may be fetched is almost always a policy mistake: say which key."""
    rows = plan.rows
    if rows and not any(p.to_download for p in plan.parts) and not cfg.url_policy.expect_all_blocked:
        raise CrawlError(
            f"none of the crawl's {rows} urls may be fetched: the url policy, robots.txt or the uid "
            f"check refused every one (see {download_dir(pool)}/rejected/). If the hosts are yours, list "
            "them in url_policy.allow_hosts; if this is expected, set url_policy.expect_all_blocked=true"
        )


def _check_every_row_counted(report: JobReport, plan: DownloadPlan) -> None:
    funnel = Funnel(report.stats)
    funnel.check()
    seen = sum(s.total.seen for s in funnel.stages)
    if seen != plan.rows:
        raise FunnelError(f"the crawl has {plan.rows} rows but the download accounted for {seen}")
