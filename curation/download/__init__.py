"""``curate download``: a raw crawl (url + caption parquet) into an img2dataset pool, with a url
policy applied before download and every row accounted for (see docs/download.md)."""

from curation.download.config import DownloadConfig
from curation.download.plan import CrawlError, PlanMismatch
from curation.download.run import download_crawl, download_stats, retry_failed, stats_files

__all__ = [
    "CrawlError",
    "DownloadConfig",
    "PlanMismatch",
    "download_crawl",
    "download_stats",
    "retry_failed",
    "stats_files",
]
