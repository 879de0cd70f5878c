"""``curate download --retry-failed POOL``: fetch again only the rows whose last attempt may pass now.

The ledger (``attributes/download/*.parquet``, one final verdict per crawl row) names each row's
last reason. Rows whose reason is in ``retry.reasons`` (timeouts, refused or reset connections,
5xx, 429) and that have had fewer than ``retry.max_attempts`` attempts become one ``retry`` part
of the plan: new shard ids after the existing ones, planned through the same url policy, uid and
robots checks (a robots.txt cached longer than ``robots.max_age_s`` is asked again). Before
fetching, the pass waits out every 429's ``Retry-After`` (counted from the end of the shard that
got it; ``retry.retry_after_s`` when the message carries none), at most ``retry.max_wait_s``.
A pass with nothing retriable plans nothing and fetches nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.io import read_json
from curation.download.accounting import REJECTED_PREFIX, STAGE, unit_name
from curation.download.config import DownloadConfig
from curation.download.plan import (
    RETRY,
    CrawlPart,
    DownloadPlan,
    add_parts,
    input_dir,
    part_uids,
    rejected_path,
)
from curation.download.robots import ROBOTS_UNAVAILABLE

log = logging.getLogger(__name__)

RATE_LIMITED = "rate_limited"
_RETRY_AFTER = re.compile(r"Retry-After:?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass
class RetryCandidates:
    rows: pa.Table  # crawl rows (the plan's input columns) to fetch again
    units: list[str]  # accounting units holding their current verdicts
    not_before: float  # epoch seconds: the latest Retry-After among them
    exhausted: int  # retriable rows left out: they had max_attempts already


def ledger(pool: Path) -> list[tuple[str, pa.Table]]:
    """The download verdicts per accounting unit: ``[(unit, table)]``."""
    files = storage.list_files(storage.location(pool) / "attributes" / STAGE, "*.parquet")
    return [(unit_name(f.stem), storage.read_parquet(f)) for f in files]


def retry_candidates(pool: Path, plan: DownloadPlan, cfg: DownloadConfig) -> RetryCandidates:
    storage.forget_listings(pool)  # the ledger may have been written by Spark or Ray workers
    retry_uids = part_uids(pool, [p for p in plan.parts if p.kind == RETRY]).to_pylist()
    attempts = Counter(retry_uids)
    wanted: set[str] = set()
    units: list[str] = []
    not_before, exhausted = 0.0, 0
    for unit, table in ledger(pool):
        hit = table.filter(pc.is_in(table[f"{STAGE}_reason"], value_set=pa.array(cfg.retry.reasons)))
        if not hit.num_rows:
            continue
        uids = hit["uid"].to_pylist()
        fresh = [u for u in uids if 1 + attempts[u] < cfg.retry.max_attempts]
        exhausted += len(uids) - len(fresh)
        if not fresh:
            continue
        wanted.update(fresh)
        units.append(unit)
        not_before = max(not_before, _retry_after(pool, unit, hit, cfg))
    rows = _crawl_rows(pool, plan.parts, wanted)
    return RetryCandidates(rows, units, not_before, exhausted)


def _retry_after(pool: Path, unit: str, hit: pa.Table, cfg: DownloadConfig) -> float:
    """When the unit's 429s may be asked again: its shard's end plus the longest Retry-After."""
    limited = hit.filter(pc.equal(hit[f"{STAGE}_reason"], RATE_LIMITED))
    shard = unit.removeprefix(unit_name(""))
    if not limited.num_rows or shard.startswith(REJECTED_PREFIX):
        return 0.0
    waits = [
        float(m.group(1)) if (m := _RETRY_AFTER.search(msg or "")) else cfg.retry.retry_after_s
        for msg in limited["error_message"].to_pylist()
    ]
    stats = storage.location(pool) / f"{shard}_stats.json"
    end = float(read_json(stats).get("end_time", 0.0)) if stats.exists() else 0.0
    return end + max(waits)


def _crawl_rows(pool: Path, parts: list[CrawlPart], uids: set[str]) -> pa.Table:
    """The plan's input rows of ``uids`` (one per uid, from the latest part holding it)."""
    schema = storage.read_parquet_schema(input_dir(pool) / f"{parts[0].index:05d}.parquet")
    columns = schema.names
    value_set = pa.array(sorted(uids), pa.string())
    found: dict[str, dict] = {}
    for p in parts:
        files = [
            input_dir(pool) / f"{p.index:05d}.parquet",
            *([rejected_path(pool, p.index)] if p.rejected else []),
        ]
        for f in files:
            table = storage.read_parquet(f, columns=columns)
            for row in table.filter(pc.is_in(table["uid"], value_set=value_set)).to_pylist():
                found[row["uid"]] = row
    return pa.Table.from_pylist([found[u] for u in sorted(found)], schema=schema)


def plan_retry(pool: Path, plan: DownloadPlan, cfg: DownloadConfig) -> tuple[CrawlPart | None, list[str]]:
    """Add a retry part for the retriable rows (None if there are none) and name the units it supersedes."""
    found = retry_candidates(pool, plan, cfg)
    if found.exhausted:
        log.info(
            "%d retriable rows had %d attempts already; not retried", found.exhausted, cfg.retry.max_attempts
        )
    if not found.rows.num_rows:
        log.info("nothing to retry in %s (reasons retried: %s)", pool, ", ".join(cfg.retry.reasons))
        return None, []
    wait = found.not_before - time.time()
    if wait > 0:
        wait = min(wait, cfg.retry.max_wait_s)
        log.info("waiting %.1f s for the Retry-After of rate-limited urls", wait)
        time.sleep(wait)
    log.info("retrying %d rows of %d accounting units", found.rows.num_rows, len(found.units))
    (part,) = add_parts(
        plan,
        pool,
        cfg,
        [(None, found.rows, 0)],
        RETRY,
        refresh_robots=ROBOTS_UNAVAILABLE in cfg.retry.reasons,
    )
    return part, found.units
