"""MetaCLIP balancing (Xu et al. 2023) as a selection step: flatten the concept distribution, no teacher.

1. *Match* (a shard job on the engine, :class:`MatchJob`): every caption is matched against a list
   of entries (one a line, or MetaCLIP's ``metadata.json`` list) with one Aho-Corasick automaton,
   on word boundaries, case-folded, punctuation read as spaces; every entry a caption contains
   counts (nested ones too: "snow leopard" matches "snow leopard" and "leopard", as MetaCLIP's
   substring matching does). Output ``POOL/attributes/metaclip_<hash>/NNNNN.parquet``: ``uid`` and
   ``metaclip_entries`` (the entry ids, comma-separated), pinned to the entry list by its hash.
2. *Count*: each entry's matches among the rows the step's input keeps (summed over all shards).
3. *Sample*: entry weight ``min(1, t / count)``, so head entries are capped near ``t`` pairs and tail
   entries keep all theirs; with ``rule: any`` (MetaCLIP's released code) a pair is kept when any of
   its entries draws under its weight, with ``rule: sum`` with probability ``min(1, sum of weights)``.
   Draws are a fixed hash of ``(seed, uid, entry)``, so the output is the same on every engine,
   worker count and run. Pairs matching no entry are dropped (``no_entry_match``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import ahocorasick
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curation.core import storage
from curation.core.config import CONF_DIR, ConfigError
from curation.core.io import atomic_write_json, atomic_write_parquet, read_json
from curation.core.pool import Pool
from curation.core.runner import ShardJob
from curation.core.stats import StageStats
from curation.selection.frame import ColumnRef, Frame
from curation.selection.ranking import ROW_ID
from curation.selection.steps import Compiled, Step, StepConfig, gate, sql_str, step_kind

DEFAULT_ENTRIES = CONF_DIR / "metaclip" / "entries.txt"
COLUMN = "metaclip_entries"
TWO_64 = "18446744073709551616.0"  # md5_number_upper's range: a draw in [0, 1)
_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Case-folded, every run of non-word characters one space, padded: ``" a red fish "``."""
    return " " + _NON_WORD.sub(" ", text.casefold()).strip() + " "


def load_entries(path: str | Path) -> list[str]:
    """Entries from a text file (one a line, ``#`` comments) or a JSON list; normalised, de-duplicated.
    ``path`` may be a URL."""
    path = storage.location(path)
    if not path.is_file():
        raise ConfigError(f"metaclip_balance: entry list {storage.url(path)} not found")
    text = storage.read_text(path)
    raw = (
        json.loads(text)
        if path.suffix == ".json"
        else [ln for ln in text.splitlines() if not ln.startswith("#")]
    )
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: a JSON entry list must be a list of strings")
    out: dict[str, None] = {}
    for entry in raw:
        norm = normalize(str(entry)).strip()
        if norm:
            out.setdefault(norm)
    if not out:
        raise ConfigError(f"{path}: no entries")
    return list(out)


class EntryMatcher:
    """One automaton over every entry, each padded with spaces so it matches whole words only."""

    def __init__(self, entries: list[str]) -> None:
        self.automaton = ahocorasick.Automaton()
        for i, entry in enumerate(entries):
            self.automaton.add_word(f" {entry} ", i)
        self.automaton.make_automaton()

    def match(self, text: str | None) -> list[int]:
        """Sorted distinct ids of the entries ``text`` contains."""
        if not text:
            return []
        return sorted({i for _, i in self.automaton.iter(normalize(text))})


def entries_stage(entries_path: Path, text: str) -> str:
    """The attribute stage of a match: named by a hash of the entry list and the caption column."""
    digest = hashlib.sha256(storage.read_bytes(entries_path) + b"\0" + text.encode()).hexdigest()[:10]
    return f"metaclip_{digest}"


class MatchJob(ShardJob):
    """Entry ids of every pool sample's caption, one attribute table per shard (any engine)."""

    name = "metaclip-match"

    def __init__(self, pool: Pool, entries_path: Path, text: str = "caption") -> None:
        self.pool = pool
        self.entries_path = storage.location(entries_path)
        self.text = text
        self.stage = entries_stage(self.entries_path, text)
        self._matcher: EntryMatcher | None = None

    def shards(self) -> list[str]:
        return self.pool.shard_ids()

    def output_dir(self) -> Path:
        return self.pool.attributes_dir(self.stage)

    def prepare(self) -> None:
        entries = self.entries_path
        where = storage.url(entries) if storage.is_remote(entries) else str(entries.resolve())
        identity = {"entries": where, "text": self.text, "stage": self.stage}
        path = self.output_dir() / "_metaclip.json"
        if not path.exists() or read_json(path) != identity:
            atomic_write_json(path, identity)

    def setup(self) -> None:
        self._matcher = EntryMatcher(load_entries(self.entries_path))

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        start = time.perf_counter()
        if self._matcher is None:
            self.setup()
        assert self._matcher is not None
        rows = self.pool.read_samples(shard)
        column = (
            self.text if self.text in rows.column_names else ("text" if "text" in rows.column_names else None)
        )
        if column is None:
            raise ConfigError(f"{self.pool.parquet_path(shard)} has no caption column {self.text!r}")
        ids = [self._matcher.match(t) for t in rows[column].to_pylist()]
        table = pa.table(
            {"uid": rows["uid"], COLUMN: pa.array([",".join(map(str, x)) for x in ids], pa.string())}
        )
        atomic_write_parquet(staging / f"{shard}.parquet", table)
        matched = pc.not_equal(table[COLUMN], "").to_numpy(zero_copy_only=False)
        reason = [None if m else "no_entry_match" for m in matched]
        sources = rows["source"] if "source" in rows.column_names else None
        stats = StageStats.from_verdicts("metaclip_match", matched, reason, sources)
        stats.extra["seconds"] = time.perf_counter() - start
        return [stats]


class MetaClipConfig(StepConfig):
    # one entry a line, or MetaCLIP's metadata.json list (a path or a URL)
    entries: storage.Location = storage.location(DEFAULT_ENTRIES)
    t: int = Field(20_000, ge=1)  # MetaCLIP's cap for 400M pairs; scale it with the pool
    seed: int = 0
    rule: Literal["any", "sum"] = "any"
    text: str = "caption"  # caption column of the pool parquet


@step_kind("metaclip_balance", MetaClipConfig)
class MetaClipStep(Step):
    """Keep pairs so that each entry contributes about ``t`` of them at most (module docstring)."""

    cfg: MetaClipConfig

    def bind(self, pool: Pool) -> None:
        super().bind(pool)
        path = self.cfg.entries
        if not path.is_file():
            raise ConfigError(f"{self.label}: entry list {storage.url(path)} not found")
        self.job = MatchJob(pool, path, self.cfg.text)
        self.n_entries = len(load_entries(path))

    def prepare(self, pool: Pool, run: Callable[[Any], Any]) -> None:
        """Match every shard's captions on the engine (resumable; skipped where already done)."""
        super().prepare(pool, run)
        report = run(self.job)
        if report.failed:
            raise RuntimeError(f"{self.label}: matching failed on shards {[o.shard for o in report.failed]}")

    def columns(self) -> list[ColumnRef]:
        return [ColumnRef(self.job.stage, COLUMN), *super().columns()]

    def compile(self, frame: Frame, within: Compiled, decisions: list[dict[str, Any]]) -> Compiled:
        col = frame.col(ColumnRef(self.job.stage, COLUMN))
        pairs = frame.temp_table(
            f"SELECT {ROW_ID}, uid, CAST(unnest(string_split({col}, ',')) AS INTEGER) AS entry "
            f"FROM ({frame.sql()}) WHERE {within.m} > 0 AND coalesce({col}, '') <> ''",
            "mc_pairs",
        )
        t = self.cfg.t
        counts = frame.temp_table(
            f"SELECT entry, count(*) AS n, least(1.0, {t} / count(*)) AS p FROM {pairs} GROUP BY entry",
            "mc_counts",
        )
        seed = sql_str(f"{self.cfg.seed}:")
        draw = f"md5_number_upper({seed} || lower(uid) || ':' || entry) / {TWO_64}"
        if self.cfg.rule == "any":
            keep_sql = (
                f"SELECT {ROW_ID} FROM {pairs} JOIN {counts} USING (entry) "
                f"GROUP BY {ROW_ID} HAVING bool_or({draw} < p)"
            )
        else:
            row_draw = f"md5_number_upper({seed} || lower(any_value(uid))) / {TWO_64}"
            keep_sql = (
                f"SELECT {ROW_ID} FROM {pairs} JOIN {counts} USING (entry) "
                f"GROUP BY {ROW_ID} HAVING {row_draw} < least(1.0, sum(p))"
            )
        kept = frame.temp_table(keep_sql, "mc_kept")
        stats = frame.query(
            f"SELECT count(*), sum(CASE WHEN n > {t} THEN 1 ELSE 0 END), "
            f"(SELECT count(*) FROM {kept}) FROM {counts}"
        )[0]
        decisions.append(
            {
                "step": self.label,
                "kind": self.kind,
                "entries": self.n_entries,
                "entries_matched": int(stats[0] or 0),
                "head_entries": int(stats[1] or 0),
                "t": t,
                "rule": self.cfg.rule,
                "seed": self.cfg.seed,
                "kept": int(stats[2] or 0),
                "match_stage": self.job.stage,
            }
        )
        matched = f"coalesce({col}, '') <> ''"
        passed = f"{matched} AND ({ROW_ID}) IN (SELECT {ROW_ID} FROM {kept})"
        reason = f"CASE WHEN NOT ({matched}) THEN 'no_entry_match' ELSE 'not_sampled_balance' END"
        return gate(frame, within, passed, reason)


def entry_counts(pool: Pool, stage: str, uids_hex: pa.Array | None = None) -> dict[int, int]:
    """Matches per entry id over the pool (or over ``uids_hex``, e.g. a selection's uids)."""
    counts: dict[int, int] = {}
    for shard in pool.shard_ids():
        table = storage.read_parquet(pool.attributes_dir(stage) / f"{shard}.parquet", columns=["uid", COLUMN])
        if uids_hex is not None:
            table = table.filter(pc.is_in(pc.utf8_lower(table["uid"]), value_set=uids_hex))
        for value in table[COLUMN].to_pylist():
            for e in filter(None, (value or "").split(",")):
                counts[int(e)] = counts.get(int(e), 0) + 1
    return counts
