"""The download plan: the crawl normalised, policy-checked and laid out into img2dataset shards.

For every crawl file ``i`` (sorted), the rows that pass the checks go to
``POOL/_download/input/<i>.parquet`` (columns url, caption, uid, source, carried columns; one
row group per pool shard) and the rows that do not to ``POOL/_download/rejected/<i>.parquet``
with their reason (``invalid_url``, ``blocked_url``, ``invalid_uid``) and detail. img2dataset
reads the input folder in the same sorted order and numbers shards consecutively, so input file
``i`` becomes pool shards ``first_shard .. first_shard + n_shards - 1`` and row group ``j`` of it is
shard ``first_shard + j``. ``POOL/_download/plan.json`` is written last; it records this layout and
a fingerprint of the crawl and the settings that shape the pool, so a rerun reuses the plan (and
img2dataset resumes) while a rerun with another crawl or settings is refused.

Checks, in order: the url policy (``invalid_url``, ``blocked_url``), the uid (``invalid_uid``), then
robots.txt for the rows still standing (``robots_disallowed``, ``robots_unavailable``; see
:mod:`curation.download.robots`), so no robots.txt is asked of a host the policy blocks.

Parts have a kind. ``crawl``: the pool's own crawl files. ``append`` (``--append``): a later crawl's
rows whose uid the pool has not seen, as new parts, hence new shard ids after the existing ones
(per-shard stages then process only those). ``retry`` (``--retry-failed``): earlier rows fetched
again; their verdicts supersede the earlier ones, so they add no crawl rows to the funnel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core import storage
from curation.core.io import atomic_path, atomic_write_json, read_json
from curation.core.uid import compute_uids
from curation.download.config import CrawlColumns, DownloadConfig
from curation.download.objects import parquet_metadata
from curation.download.robots import RobotsCache
from curation.download.urlpolicy import UrlPolicy

log = logging.getLogger(__name__)

PLAN_VERSION = 1
INVALID_UID = "invalid_uid"
CRAWL, APPEND, RETRY = "crawl", "append", "retry"
POOL_COLUMNS = ("url", "caption", "uid", "source")
CAPTION_CANDIDATES = ("caption", "text")


class CrawlError(ValueError):
    """A crawl that cannot be read as url/caption rows; the message names the file and column."""


class PlanMismatch(ValueError):
    """The pool was planned from another crawl or with other settings."""


@dataclass
class CrawlPart:
    """One crawl file and the pool shards its downloadable rows became."""

    index: int
    file: str
    rows: int
    to_download: int
    rejected: int
    first_shard: int
    n_shards: int
    kind: str = "crawl"  # crawl | append | retry
    crawl: list[dict[str, Any]] | None = None  # append: the appended crawl's fingerprint
    skipped_known: int = 0  # append: crawl rows whose uid the pool already had


@dataclass
class DownloadPlan:
    number_sample_per_shard: int
    fingerprint: dict[str, Any]
    parts: list[CrawlPart] = field(default_factory=list)

    def shard_ids(self) -> list[str]:
        return [shard_name(p.first_shard + j) for p in self.parts for j in range(p.n_shards)]

    def locate(self, shard: str) -> tuple[CrawlPart, int]:
        """The crawl part holding ``shard`` and the shard's row group in that part's input file."""
        number = int(shard)
        for p in self.parts:
            if p.first_shard <= number < p.first_shard + p.n_shards:
                return p, number - p.first_shard
        raise KeyError(f"shard {shard} is not in the download plan")

    def shard_rows(self, shard: str) -> int:
        part, group = self.locate(shard)
        return min(self.number_sample_per_shard, part.to_download - group * self.number_sample_per_shard)

    @property
    def rows(self) -> int:
        """Crawl rows the pool accounts for (retry parts re-fetch rows already counted)."""
        return sum(p.rows for p in self.parts if p.kind != RETRY)

    @property
    def next_shard(self) -> int:
        return max((p.first_shard + p.n_shards for p in self.parts), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DownloadPlan:
        return cls(d["number_sample_per_shard"], d["fingerprint"], [CrawlPart(**p) for p in d["parts"]])


def shard_name(number: int) -> str:
    return f"{number:05d}"  # img2dataset's oom_shard_count=5


def download_dir(pool: Path) -> Path:
    return storage.location(pool) / "_download"


def input_dir(pool: Path) -> Path:
    return download_dir(pool) / "input"


def rejected_path(pool: Path, index: int) -> Path:
    return download_dir(pool) / "rejected" / f"{index:05d}.parquet"


def plan_path(pool: Path) -> Path:
    return download_dir(pool) / "plan.json"


def crawl_files(crawl: Path) -> list[Path]:
    """A parquet file, or the parquet files of a directory in sorted order (a local path or a URL)."""
    crawl = storage.location(crawl)
    with storage.storage_errors(crawl, "read"):
        is_dir = crawl.is_dir()
        files = storage.list_files(crawl, "*.parquet") if is_dir else [crawl] if crawl.exists() else []
    if is_dir and not files:
        raise CrawlError(f"{crawl}: no .parquet files in this directory")
    if not files:
        raise CrawlError(f"crawl not found: {crawl}")
    return files


def fingerprint(files: list[Path], cfg: DownloadConfig) -> dict[str, Any]:
    """What determines the pool's layout and content: the crawl files and the shaping settings."""
    crawl = [{"name": f.name, "bytes": f.stat().st_size, "rows": parquet_metadata(f).num_rows} for f in files]
    settings = cfg.model_dump(
        mode="json",
        include={
            "columns": True,
            "url_policy": {"allow_hosts"},
            "image": True,
            "number_sample_per_shard": True,
            "robots": {"enabled", "on_unavailable"},
        },
    )
    return {"crawl": crawl, "settings": settings}


def prepare_plan(crawl: Path, pool: Path, cfg: DownloadConfig, append: bool = False) -> DownloadPlan:
    """Reuse the pool's plan if it was made from the same crawl and settings, else make it.

    ``append``: add ``crawl``'s rows with uids the pool has not seen as new parts (once: a rerun of
    the same append reuses them).
    """
    files = crawl_files(crawl)
    fp = fingerprint(files, cfg)
    pool = storage.location(pool)
    path = plan_path(pool)
    if not path.exists():
        if append:
            raise PlanMismatch(f"{pool} has no download plan to append to; drop --append for a new pool")
        if storage.list_files(pool, "[0-9]*.parquet"):
            raise PlanMismatch(f"{pool} already holds pool shards that curate download did not plan")
        plan = DownloadPlan(cfg.number_sample_per_shard, fp)
        add_parts(plan, pool, cfg, ((f, read_crawl(f, cfg.columns), 0) for f in files), CRAWL)
        return plan
    plan = load_plan(pool)
    check_settings(plan, fp["settings"], pool)
    if not append:
        if plan.fingerprint["crawl"] != fp["crawl"]:
            raise PlanMismatch(
                f"{pool} was downloaded from another crawl (crawl); use a new --out, the same crawl, "
                "or --append to add this crawl's new rows"
            )
        log.info(
            "reusing the download plan in %s (%d rows, %d shards)", path, plan.rows, len(plan.shard_ids())
        )
        return plan
    if plan.fingerprint["crawl"] == fp["crawl"] or any(p.crawl == fp["crawl"] for p in plan.parts):
        log.info("%s is already part of %s; resuming its download", crawl, pool)
        return plan
    known = part_uids(pool, plan.parts)
    parts = add_parts(plan, pool, cfg, _new_rows(files, cfg, known), APPEND, crawl=fp["crawl"])
    log.info("appended %s: %d rows already in the pool skipped", crawl, sum(p.skipped_known for p in parts))
    return plan


def _new_rows(
    files: list[Path], cfg: DownloadConfig, known: pa.Array
) -> Iterator[tuple[Path, pa.Table, int]]:
    """Each crawl file's rows whose uid is not in ``known``, and how many were (one file in memory)."""
    for f in files:
        table, _, _ = resolve_uids(read_crawl(f, cfg.columns))
        new = pc.invert(pc.is_in(table["uid"], value_set=known))
        kept = table.filter(new)
        yield f, kept, table.num_rows - kept.num_rows


def load_plan(pool: Path) -> DownloadPlan:
    """The pool's plan; input or rejected files of an unfinished addition (not in the plan) are removed."""
    path = plan_path(pool)
    if not path.exists():
        raise PlanMismatch(f"{pool} has no download plan ({path}); is it a pool curate download wrote?")
    plan = DownloadPlan.from_dict(read_json(path))
    known = {f"{p.index:05d}.parquet" for p in plan.parts}
    written = [
        *storage.list_files(input_dir(pool), "*.parquet"),
        *storage.list_files(download_dir(pool) / "rejected", "*.parquet"),
    ]
    for orphan in written:
        if orphan.name not in known:
            log.warning("removing %s: written by an addition to the pool that did not finish", orphan)
            storage.remove(orphan)
    return plan


def check_settings(plan: DownloadPlan, settings: dict[str, Any], pool: Path) -> None:
    if plan.fingerprint["settings"] != settings:
        diff = ", ".join(_differences(plan.fingerprint["settings"], settings))
        raise PlanMismatch(
            f"{pool} was downloaded with other settings ({diff}); use a new --out or the same settings"
        )


def part_uids(pool: Path, parts: list[CrawlPart]) -> pa.Array:
    """Every uid the ``parts`` handed to img2dataset or rejected."""
    files = [input_dir(pool) / f"{p.index:05d}.parquet" for p in parts]
    files += [rejected_path(pool, p.index) for p in parts if p.rejected]
    chunks = [c for f in files for c in storage.read_parquet(f, columns=["uid"])["uid"].chunks]
    return pa.chunked_array(chunks, pa.string()).combine_chunks()


def add_parts(
    plan: DownloadPlan,
    pool: Path,
    cfg: DownloadConfig,
    tables: Iterable[tuple[Path | None, pa.Table, int]],
    kind: str,
    crawl: list[dict[str, Any]] | None = None,
    refresh_robots: bool = False,
) -> list[CrawlPart]:
    """Plan ``(file, rows, rows skipped as known)`` as new parts after the existing ones; the plan last."""
    policy = UrlPolicy(cfg.url_policy.allow_hosts)
    robots = robots_cache(pool, cfg, policy)
    added = []
    for file, table, skipped in tables:
        part = _plan_table(
            len(plan.parts), file, table, pool, cfg, policy, robots, plan.next_shard, kind, refresh_robots
        )
        part.crawl, part.skipped_known = crawl, skipped
        plan.parts.append(part)
        added.append(part)
    atomic_write_json(plan_path(pool), plan.to_dict())
    return added


def robots_cache(pool: Path, cfg: DownloadConfig, policy: UrlPolicy) -> RobotsCache | None:
    if not cfg.robots.enabled:
        return None
    d = cfg.downloader
    return RobotsCache(
        download_dir(pool) / "robots.json", cfg.robots, policy, d.user_agent_token, d.agent_token()
    )


def _plan_table(
    index: int,
    file: Path | None,
    table: pa.Table,
    pool: Path,
    cfg: DownloadConfig,
    policy: UrlPolicy,
    robots: RobotsCache | None,
    first_shard: int,
    kind: str,
    refresh_robots: bool = False,
) -> CrawlPart:
    reasons, details = policy.classify(table["url"])
    table, uid_reasons, uid_details = resolve_uids(table)
    reasons, details = pc.coalesce(reasons, uid_reasons), pc.coalesce(details, uid_details)
    if robots is not None:
        candidates = np.flatnonzero(pc.is_null(reasons).to_numpy(zero_copy_only=False))
        take = pa.array(candidates, pa.int64())
        r, d = robots.classify(table["url"].take(take), refresh_unreachable=refresh_robots)
        reasons, details = _scatter(reasons, candidates, r), _scatter(details, candidates, d)
    ok = pc.is_null(reasons)
    n_ok = pc.sum(ok.cast(pa.int64())).as_py() or 0
    keep = table.filter(ok)
    with atomic_path(input_dir(pool) / f"{index:05d}.parquet") as tmp:
        pq.write_table(keep, tmp, row_group_size=cfg.number_sample_per_shard, compression="zstd")
    rejected = table.append_column("reason", reasons).append_column("detail", details).filter(pc.invert(ok))
    if rejected.num_rows:
        with atomic_path(rejected_path(pool, index)) as tmp:
            pq.write_table(rejected, tmp, compression="zstd")
    n_shards = math.ceil(n_ok / cfg.number_sample_per_shard)
    name = file.name if file is not None else f"{kind} part {index}"
    counts = pc.value_counts(rejected["reason"]).to_pylist() if rejected.num_rows else []
    log.info(
        "%s: %d rows, %d to download in %d shards, %d rejected before download %s",
        name, table.num_rows, n_ok, n_shards, rejected.num_rows,
        {c["values"]: c["counts"] for c in counts} or "",
    )  # fmt: skip
    return CrawlPart(
        index, str(file.resolve()) if file is not None else "", table.num_rows, n_ok, rejected.num_rows,
        first_shard, n_shards, kind,
    )  # fmt: skip


def _scatter(values: pa.Array, rows: np.ndarray, new: pa.Array) -> pa.Array:
    """``values`` with ``new`` written at ``rows`` (where ``new`` is not null)."""
    out = values.to_numpy(zero_copy_only=False).astype(object)
    updates = new.to_numpy(zero_copy_only=False)
    hit = ~pc.is_null(new).to_numpy(zero_copy_only=False)
    out[rows[hit]] = updates[hit]
    return pa.array(out, pa.string())


def read_crawl(file: Path, columns: CrawlColumns) -> pa.Table:
    """The crawl's rows as url, caption, uid (possibly null), source and carried columns."""
    try:
        names = storage.read_parquet_schema(file).names
    except (OSError, pa.ArrowInvalid) as exc:
        raise CrawlError(f"{file}: not a readable parquet file ({exc})") from exc
    caption_col = columns.caption or next((c for c in CAPTION_CANDIDATES if c in names), None)
    wanted = {"url": columns.url, "caption": caption_col} | {c: c for c in columns.extra_columns()}
    for role, name in wanted.items():
        if name is None or name not in names:
            looked = repr(name) if name else " or ".join(repr(c) for c in CAPTION_CANDIDATES)
            required = role in ("url", "caption")
            setting = f"columns.{role}" if required else "columns.carry / columns.bbox"
            raise CrawlError(
                f"{file}: no {role if required else 'carried'} column {looked} "
                f"(columns: {', '.join(names)}); set {setting} to the right name"
            )
    optional = {"uid": columns.uid, "source": columns.source}
    read = [*dict.fromkeys([*wanted.values(), *(c for c in optional.values() if c in names)])]
    raw = storage.read_parquet(file, columns=read)
    n = raw.num_rows
    out = {
        "url": _as_string(raw[columns.url], file, columns.url),
        "caption": _as_string(raw[caption_col], file, caption_col),
        "uid": _as_string(raw[columns.uid], file, columns.uid)
        if columns.uid in names
        else pa.nulls(n, pa.string()),
        "source": (
            _as_string(raw[columns.source], file, columns.source).fill_null(columns.default_source)
            if columns.source in names
            else pa.array(np.full(n, columns.default_source, dtype=object), pa.string())
        ),
    }
    out.update({c: raw[c] for c in columns.extra_columns()})
    return pa.table(out)


def resolve_uids(table: pa.Table) -> tuple[pa.Table, pa.Array, pa.Array]:
    """Lower-case source uids, derive missing ones; malformed ones become ``invalid_uid`` rejections."""
    given = pc.utf8_lower(pc.utf8_trim_whitespace(table["uid"])).combine_chunks()
    valid = pc.match_substring_regex(given, r"^[0-9a-f]{32}$")
    bad = valid.fill_null(False).to_numpy(zero_copy_only=False) == False  # noqa: E712
    bad &= ~pc.is_null(given).to_numpy(zero_copy_only=False)
    missing = np.flatnonzero(pc.is_null(given).to_numpy(zero_copy_only=False))
    uids = given.to_numpy(zero_copy_only=False).astype(object)
    if len(missing):
        rows = table.take(pa.array(missing, pa.int64()))
        uids[missing] = compute_uids(rows["url"].to_pylist(), rows["caption"].to_pylist())
    reasons = np.where(bad, INVALID_UID, None)
    details = np.full(len(uids), None, dtype=object)
    details[bad] = [f"uid {u!r} is not 32 hex characters" for u in uids[bad]]
    table = table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids, pa.string()))
    return table, pa.array(reasons, pa.string()), pa.array(details, pa.string())


def _as_string(column: pa.ChunkedArray, file: Path, name: str) -> pa.Array:
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise CrawlError(f"{file}: column {name!r} of type {column.type} is not text; it must hold strings")
    try:
        return column.combine_chunks().cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CrawlError(f"{file}: column {name!r} of type {column.type} is not text ({exc})") from exc


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out or ["unknown"]
