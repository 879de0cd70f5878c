"""Accounting of the download: every crawl row ends up kept or dropped with a reason.

A shard job run by the ordinary shard runner (markers, atomic commits, per-unit stats) over two
kinds of units, with the pool as its output folder:

- ``download-NNNNN`` for pool shard ``NNNNN``: img2dataset's rows (``NNNNN.parquet``), one per url
  of the shard's input row group. A url img2dataset wrote no row for (a per-sample crash it only
  prints) is added back as ``not_recorded``, so the funnel still balances.
- ``download-rejected-NNNNN``: the rows of crawl file ``NNNNN`` that the url policy or the uid
  check dropped before download.

Each unit writes its verdicts to ``attributes/download/NNNNN.parquet`` or
``attributes/download/rejected-NNNNN.parquet`` (uid, source, key, url, download_keep,
download_reason, error_message: the raw img2dataset message or the policy's detail); the runner
writes its ``download`` stage stats to ``POOL/_stats/<unit>.json``, the pool-level stats folder
that dataset cards read before the attribute stages', and its marker to ``POOL/_done/<unit>.done``.
A rerun finds the markers and reads the same stats back.

A retry pass (``--retry-failed``) adds ``retry`` parts: a row fetched again is accounted for in
its latest attempt only, so the units of earlier parts leave out the uids a later retry part holds
(their markers are removed when the retry is planned, and they are accounted again). Each crawl row
then has one verdict, its latest, and the funnel still counts every crawl row once.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.io import atomic_write_parquet, read_json
from curation.core.runner import ShardJob
from curation.core.stats import StageStats
from curation.download.failures import NOT_RECORDED, SUCCESS, failure_reasons
from curation.download.objects import read_row_group
from curation.download.plan import (
    RETRY,
    DownloadPlan,
    download_dir,
    input_dir,
    part_uids,
    rejected_path,
)
from curation.download.watchdog import shard_failures

STAGE = "download"
UNIT_PREFIX = f"{STAGE}-"  # unit names are unique in POOL/_stats and POOL/_done
REJECTED_PREFIX = "rejected-"
ROW_SCHEMA = pa.schema([(c, pa.string()) for c in ("key", "url", "uid", "source", "status", "error_message")])
VERDICT_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        (f"{STAGE}_keep", pa.bool_()),
        (f"{STAGE}_reason", pa.string()),
        ("error_message", pa.string()),
    ]
)


def unit_name(shard: str) -> str:
    """The accounting unit of a pool shard (``00003``) or of a crawl file's rejections."""
    return f"{UNIT_PREFIX}{shard}"


class ShardNotDownloaded(RuntimeError):
    """img2dataset did not finish a shard (no ``NNNNN_stats.json``); a rerun retries it."""


class DownloadAccounting(ShardJob):
    name = STAGE

    def __init__(self, pool: Path, plan: DownloadPlan) -> None:
        self.pool = storage.location(pool)
        self.plan = plan
        self._superseded: dict[int, pa.Array] = {}

    def shards(self) -> list[str]:
        rejected = [f"{REJECTED_PREFIX}{p.index:05d}" for p in self.plan.parts if p.rejected]
        return [unit_name(s) for s in [*self.plan.shard_ids(), *rejected]]

    def output_dir(self) -> Path:
        return self.pool

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        storage.forget_listings(self.pool)  # img2dataset's workers wrote the shard from other processes
        name = shard.removeprefix(UNIT_PREFIX)
        if name.startswith(REJECTED_PREFIX):
            index = int(name.removeprefix(REJECTED_PREFIX))
            table, extra = self._rejected(index), {}
        else:
            index = self.plan.locate(name)[0].index
            table, extra = self._downloaded(name)
        later = self.superseded(index)
        if len(later):
            table = table.filter(pc.invert(pc.is_in(table["uid"], value_set=later)))
        atomic_write_parquet(staging / "attributes" / STAGE / f"{name}.parquet", table)
        stats = StageStats.from_verdicts(
            STAGE,
            table[f"{STAGE}_keep"].to_numpy(),
            table[f"{STAGE}_reason"].to_numpy(zero_copy_only=False),
            table["source"].to_numpy(zero_copy_only=False),
        )
        stats.extra.update(extra)
        stats.check_balanced()
        return [stats]

    def superseded(self, index: int) -> pa.Array:
        """Uids that a retry part after part ``index`` fetched again (their verdict is there)."""
        if index not in self._superseded:
            later = [p for p in self.plan.parts if p.kind == RETRY and p.index > index]
            self._superseded[index] = part_uids(self.pool, later)
        return self._superseded[index]

    def _downloaded(self, shard: str) -> tuple[pa.Table, dict[str, float]]:
        stats_file = self.pool / f"{shard}_stats.json"
        if not stats_file.exists():
            why = shard_failures(self.pool).get(shard)
            raise ShardNotDownloaded(
                f"img2dataset did not finish shard {shard}{f' ({why})' if why else ''} "
                f"(see {download_dir(self.pool)}/img2dataset.log); rerun the same command to retry it"
            )
        rows = storage.read_parquet(self.pool / f"{shard}.parquet", columns=ROW_SCHEMA.names).cast(ROW_SCHEMA)
        expected = self.plan.shard_rows(shard)
        if rows.num_rows > expected:
            raise RuntimeError(f"shard {shard} has {rows.num_rows} rows but only {expected} urls were sent")
        if rows.num_rows < expected:
            rows = pa.concat_tables([rows, self._not_recorded(shard, rows)])
        keep = pc.equal(rows["status"], SUCCESS).fill_null(False)
        table = pa.table(
            {
                "uid": rows["uid"],
                "source": rows["source"],
                "key": rows["key"],
                "url": rows["url"],
                f"{STAGE}_keep": keep,
                f"{STAGE}_reason": failure_reasons(rows["status"], rows["error_message"]),
                "error_message": rows["error_message"],
            },
            schema=VERDICT_SCHEMA,
        )
        seconds = float(read_json(stats_file).get("duration", 0.0))
        return table.sort_by("key"), {"download_seconds": seconds}

    def _not_recorded(self, shard: str, rows: pa.Table) -> pa.Table:
        """Input rows of ``shard`` that img2dataset's parquet lacks, as failed rows."""
        part, group = self.plan.locate(shard)
        sent = read_row_group(input_dir(self.pool) / f"{part.index:05d}.parquet", group)
        digits = math.ceil(math.log10(self.plan.number_sample_per_shard))  # as img2dataset's compute_key
        seen = {int(k) % 10**digits for k in rows["key"].to_pylist()}
        missing = [i for i in range(sent.num_rows) if i not in seen]
        lost = sent.take(pa.array(missing, pa.int64()))
        return pa.table(
            {
                "key": pa.nulls(len(missing), pa.string()),
                "url": lost["url"],
                "uid": lost["uid"],
                "source": lost["source"],
                "status": pa.array([NOT_RECORDED] * len(missing), pa.string()),
                "error_message": pa.array(
                    ["img2dataset wrote no row for this url"] * len(missing), pa.string()
                ),
            },
            schema=ROW_SCHEMA,
        )

    def _rejected(self, index: int) -> pa.Table:
        rows = storage.read_parquet(rejected_path(self.pool, index))
        return pa.table(
            {
                "uid": rows["uid"],
                "source": rows["source"],
                "key": pa.nulls(rows.num_rows, pa.string()),
                "url": rows["url"],
                f"{STAGE}_keep": pa.array([False] * rows.num_rows, pa.bool_()),
                f"{STAGE}_reason": rows["reason"],
                "error_message": rows["detail"],
            },
            schema=VERDICT_SCHEMA,
        )
