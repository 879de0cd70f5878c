"""Exact out-of-core top-k: find the cut (k-th value and boundary uid) with a few DuckDB scans.

Sorting a billion-row score column to keep its top 30% is exact but needs the whole column in
memory or a full external sort. We only need the *cut*: the value ``t`` of the k-th best row and,
when several rows share ``t`` and only some are kept, which of those (the smaller uids). Then "row
is kept" is the predicate ``v > t OR (v = t AND row in kept_ties)``, which every later scan can
apply on its own. Kept ties are named by (parquet file, row number), not by uid, so later scans
never read the (large, incompressible) uid column just to place a handful of tied rows.

The cut is found in two or three scans of the value column (never the whole column in memory):

1. count the candidates and the valid ones, and draw a Bernoulli sample of about 2^18 values, in
   one ``GROUP BY`` (unsampled rows collapse into one group per validity);
2. bracket the target rank with sample quantiles plus a safety margin and count, in one
   ``GROUP BY``, every row better than the bracket (one group) and each distinct value inside it;
   walking those groups in order gives ``t`` exactly. If the sample was unlucky and the target rank
   falls outside the bracket, the bracket widens and this scan repeats: exactness never depends on
   the sample, only the speed does;
3. only if the rows tied at ``t`` are not all kept: the ``m`` of them with the smallest uids
   (``ORDER BY uid LIMIT m`` over the tied rows only), into a small temporary table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

SAMPLE_TARGET = 1 << 18  # expected sample size of the first scan
MAX_ATTEMPTS = 5


ROW_ID = "_file, file_row_number"  # a frame row's identity: its parquet file and row number in it


class SQLRunner(Protocol):
    def query(self, sql: str) -> list[tuple[Any, ...]]: ...

    def arrow(self, sql: str) -> pa.Table: ...

    def temp_table(self, sql: str, prefix: str) -> str: ...


@dataclass
class Sample:
    """What the first scan learns: candidate counts and a sample of valid values (with multiplicity)."""

    candidates: int
    valid: int
    values: np.ndarray  # sorted ascending, repeated by multiplicity

    def quantile(self, q: float) -> Any:
        if len(self.values) == 0:
            return None
        i = min(max(round(q * (len(self.values) - 1)), 0), len(self.values) - 1)
        return self.values[i].item()


def sample_sql(relation: str, value: str, valid: str, fraction: float) -> str:
    """One scan: count of candidates by validity, and a Bernoulli sample of valid values."""
    return (
        f"SELECT {valid} AS ok, CASE WHEN {valid} AND random() < {fraction!r} THEN {value} END AS g, "
        f"count(*) AS n FROM ({relation}) GROUP BY ALL"
    )


def draw_sample(runner: SQLRunner, relation: str, value: str, valid: str, rows_estimate: int) -> Sample:
    fraction = min(1.0, SAMPLE_TARGET / max(rows_estimate, 1))
    t = runner.arrow(sample_sql(relation, value, valid, fraction))
    ok = t["ok"].to_numpy(zero_copy_only=False).astype(bool)
    n = t["n"].to_numpy(zero_copy_only=False).astype(np.int64)
    g = t["g"]
    sampled = pc.is_valid(g).to_numpy(zero_copy_only=False)
    values = np.asarray(g.filter(pa.array(sampled)).to_numpy(zero_copy_only=False))
    values = np.sort(np.repeat(values, n[sampled]))
    return Sample(int(n.sum()), int(n[ok].sum()), values)


@dataclass
class Cut:
    """Where an ordered top-k stops. ``kind`` is ``none`` (keep nothing), ``all`` or ``value``."""

    kind: str
    k: int
    n: int
    value: Any = None
    tie_table: str | None = None  # None: every row tied at ``value`` is kept; else the kept ones' ROW_IDs
    boundary_uid: str | None = None  # the largest uid among the kept tied rows (for the manifest)
    better: int = 0  # rows strictly better than ``value``
    tied: int = 0  # rows equal to ``value``
    descending: bool = True
    sql_type: str = "DOUBLE"
    scans: int = 0

    def predicate(self, value_sql: str) -> str:
        """SQL boolean: the row is among the kept ones (for valid candidates)."""
        if self.kind == "none":
            return "FALSE"
        if self.kind == "all":
            return "TRUE"
        t = sql_literal(self.value, self.sql_type)
        op = ">" if self.descending else "<"
        if self.tie_table is None:
            return f"({value_sql} {op}= {t})"
        tied = f"({ROW_ID}) IN (SELECT {ROW_ID} FROM {self.tie_table})"
        return f"({value_sql} {op} {t} OR ({value_sql} = {t} AND {tied}))"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "k": self.k,
            "candidates": self.n,
            "value": jsonable(self.value),
            "boundary_uid": self.boundary_uid,
            "strictly_better": self.better,
            "tied_at_value": self.tied,
            "descending": self.descending,
            "scans": self.scans,
        }


def jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | str | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    return str(v)


def sql_literal(value: Any, sql_type: str) -> str:
    """A literal of exactly ``value`` typed as the column (``repr`` round-trips floats)."""
    text = repr(value) if isinstance(value, float) else str(value)
    return f"CAST('{text}' AS {sql_type})"


def find_cut(
    runner: SQLRunner,
    relation: str,
    value: str,
    k: int,
    sample: Sample,
    *,
    descending: bool = True,
    uid_ties: bool = True,
    sql_type: str = "DOUBLE",
) -> Cut:
    """The cut of the best ``k`` rows of ``relation`` (a SQL subquery with columns ``uid``, ``ROW_ID``
    and the value expression ``value``, restricted to valid candidates; ``sample`` drawn over the
    same rows).

    ``uid_ties``: keep exactly ``k`` rows, ties at the cut going to the smaller uid; otherwise keep
    every row at least as good as the k-th (DataComp's threshold semantics).
    """
    n = sample.valid
    if k <= 0:
        return Cut("none", k, n, descending=descending, sql_type=sql_type)
    if k >= n:
        return Cut("all", k, n, descending=descending, sql_type=sql_type)
    q = 1.0 - k / n if descending else k / n  # ascending-quantile position of the k-th best row
    m = max(len(sample.values), 1)
    margin = 6 * math.sqrt(max(q * (1 - q), 1.0 / m) / m) + 2.0 / m
    scans = 0
    for attempt in range(MAX_ATTEMPTS):
        last = attempt == MAX_ATTEMPTS - 1
        lo = None if last or q - margin <= 0 else sample.quantile(q - margin)
        hi = None if last or q + margin >= 1 else sample.quantile(q + margin)
        scans += 1
        found = _walk(_bracket(runner, relation, value, lo, hi, descending, sql_type), k, descending)
        if found is not None:
            break
        log.debug("cut bracket [%r, %r] missed rank %d of %d; widening", lo, hi, k, n)
        margin *= 8
    else:  # pragma: no cover - the last attempt has an unbounded bracket, which always contains rank k
        raise RuntimeError("could not bracket the cut")
    t, better, tied = found
    cut = Cut(
        "value", k, n, t, better=better, tied=tied, descending=descending, sql_type=sql_type, scans=scans
    )
    need = k - better
    if uid_ties and need < tied:
        cut.scans += 1
        cut.tie_table = runner.temp_table(
            f"SELECT {ROW_ID}, uid FROM ({relation}) WHERE {value} = {sql_literal(t, sql_type)} "
            f"ORDER BY uid LIMIT {need}",
            "ties",
        )
        cut.boundary_uid = runner.query(f"SELECT max(uid) FROM {cut.tie_table}")[0][0]
    return cut


def _bracket(
    runner: SQLRunner, relation: str, value: str, lo: Any, hi: Any, descending: bool, sql_type: str
) -> pa.Table:
    """Rows better than the bracket as one group (``g`` NULL), and a count per distinct value inside."""
    lo_s = sql_literal(lo, sql_type) if lo is not None else None
    hi_s = sql_literal(hi, sql_type) if hi is not None else None
    if descending:
        beyond = f"{value} > {hi_s}" if hi_s else "FALSE"
        where = f"{value} >= {lo_s}" if lo_s else "TRUE"
    else:
        beyond = f"{value} < {lo_s}" if lo_s else "FALSE"
        where = f"{value} <= {hi_s}" if hi_s else "TRUE"
    return runner.arrow(
        f"SELECT CASE WHEN {beyond} THEN NULL ELSE {value} END AS g, count(*) AS n "
        f"FROM ({relation}) WHERE {where} GROUP BY g"
    )


def _walk(groups: pa.Table, k: int, descending: bool) -> tuple[Any, int, int] | None:
    """(t, rows strictly better than t, rows equal to t) if rank k lies inside the bracket."""
    g = groups["g"]
    n = groups["n"].to_numpy(zero_copy_only=False).astype(np.int64)
    inside = pc.is_valid(g).to_numpy(zero_copy_only=False)
    better = int(n[~inside].sum())
    if better >= k:
        return None
    values = g.filter(pa.array(inside))
    counts = n[inside]
    order = np.asarray(pc.array_sort_indices(values, order="descending" if descending else "ascending"))
    cum = better + np.cumsum(counts[order])
    pos = int(np.searchsorted(cum, k))  # first group whose cumulative count reaches k
    if pos >= len(cum):
        return None
    i = order[pos]
    before = int(cum[pos - 1]) if pos > 0 else better
    return values[int(i)].as_py(), before, int(counts[i])
