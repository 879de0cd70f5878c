"""Stage statistics that add up, and the funnel built from them.

Every stage reports, per shard, how many samples it saw, kept and dropped (by reason), overall and
per source. Shard stats merge by plain addition, so the same numbers come out whatever engine ran
the shards and in whatever order. The funnel is the ordered list of merged stage stats; it must
balance exactly: ``seen == kept + sum(dropped)`` for every stage and every source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class FunnelError(AssertionError):
    """Counts that do not balance: some sample was lost or counted twice."""


@dataclass
class Counts:
    seen: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.seen += other.seen
        self.kept += other.kept
        self.dropped.update(other.dropped)

    def balanced(self) -> bool:
        return self.seen == self.kept + sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Counts:
        return cls(
            int(d["seen"]), int(d["kept"]), Counter({k: int(v) for k, v in d.get("dropped", {}).items()})
        )


@dataclass
class StageStats:
    """Counts of one stage on one shard (or merged over shards), overall and per source."""

    stage: str
    total: Counts = field(default_factory=Counts)
    by_source: dict[str, Counts] = field(default_factory=dict)
    extra: Counter[str] = field(default_factory=Counter)  # additive figures: seconds, bytes, ...

    @classmethod
    def from_verdicts(
        cls,
        stage: str,
        keep: np.ndarray,
        reasons: Sequence[str | None] | np.ndarray | pa.Array | pa.ChunkedArray,
        sources: Sequence[str | None] | np.ndarray | pa.Array | pa.ChunkedArray | None = None,
    ) -> StageStats:
        """Count a keep mask and per-row drop reasons (required for every dropped row), per source."""
        return count_verdicts(
            stage, keep, _arrow_strings(reasons), None if sources is None else _arrow_strings(sources)
        )

    def add(self, other: StageStats) -> None:
        if other.stage != self.stage:
            raise ValueError(f"cannot add stats of {other.stage} to {self.stage}")
        self.total.add(other.total)
        for s, c in other.by_source.items():
            self.by_source.setdefault(s, Counts()).add(c)
        self.extra.update(other.extra)

    def check_balanced(self) -> None:
        problems = []
        if not self.total.balanced():
            problems.append(f"total: {self.total.to_dict()}")
        problems += [f"{s}: {c.to_dict()}" for s, c in self.by_source.items() if not c.balanced()]
        if self.by_source:
            summed = Counts()
            for c in self.by_source.values():
                summed.add(c)
            if summed.to_dict() != self.total.to_dict():
                problems.append("per-source counts do not add up to the total")
        if problems:
            raise FunnelError(f"stage {self.stage} does not balance: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            **self.total.to_dict(),
            "by_source": {s: c.to_dict() for s, c in sorted(self.by_source.items())},
            "extra": dict(sorted(self.extra.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageStats:
        return cls(
            stage=d["stage"],
            total=Counts.from_dict(d),
            by_source={s: Counts.from_dict(c) for s, c in d.get("by_source", {}).items()},
            extra=Counter(d.get("extra", {})),
        )


def _arrow_strings(values: Sequence[str | None] | np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    return pa.array([None if v is None else str(v) for v in values], pa.string())


# Counting with numpy over dictionary-encoded Arrow columns: no Python object per row, so a
# builder that labels millions of captions counts as cheaply as a filter's shard.
def _codes(column: pa.Array | pa.ChunkedArray, null_name: str | None) -> tuple[np.ndarray, list[str | None]]:
    """Dictionary codes and names of a string column; nulls get the code ``len(names)``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    enc = column.cast(pa.string()).dictionary_encode()
    names: list[str | None] = enc.dictionary.to_pylist()
    codes = pc.fill_null(enc.indices, len(names)).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [*names, null_name]


def count_verdicts(
    stage: str,
    keep: np.ndarray,
    reason: pa.Array | pa.ChunkedArray,
    source: pa.Array | pa.ChunkedArray | None = None,
) -> StageStats:
    """StageStats of a keep mask and a reason column (null where kept), overall and per source."""
    keep = np.asarray(keep, dtype=bool)
    n = len(keep)
    r_codes, r_names = _codes(reason, None)
    if len(r_codes) != n:
        raise ValueError("keep and reason differ in length")
    missing = (~keep) & (r_codes == len(r_names) - 1)
    if missing.any():
        raise FunnelError(f"stage {stage}: {int(missing.sum())} dropped rows have no drop reason")
    if source is None:
        s_codes, s_names = np.zeros(n, dtype=np.int64), ["unknown"]
    else:
        s_codes, s_names = _codes(source, "unknown")
    stats = StageStats(stage)
    n_r = len(r_names)
    dropped = np.bincount(s_codes[~keep] * n_r + r_codes[~keep], minlength=len(s_names) * n_r)
    dropped = dropped.reshape(len(s_names), n_r)
    seen = np.bincount(s_codes, minlength=len(s_names))
    kept = np.bincount(s_codes[keep], minlength=len(s_names))
    for i, name in enumerate(s_names):
        if seen[i] == 0:
            continue
        by_reason = Counter({str(r_names[j]): int(dropped[i, j]) for j in range(n_r) if dropped[i, j]})
        c = Counts(seen=int(seen[i]), kept=int(kept[i]), dropped=by_reason)
        key = str(name)
        stats.by_source.setdefault(key, Counts()).add(c)
        stats.total.add(c)
    return stats


def merge(stats: Iterable[StageStats]) -> list[StageStats]:
    """Merge shard stats by stage, keeping the order in which stages first appear."""
    merged: dict[str, StageStats] = {}
    for s in stats:
        if s.stage not in merged:
            merged[s.stage] = StageStats(s.stage)
        merged[s.stage].add(s)
    return list(merged.values())


@dataclass
class Funnel:
    """Ordered stages; each stage sees what the previous one kept."""

    stages: list[StageStats]

    def check(self) -> None:
        """Raise :class:`FunnelError` unless every stage balances and stages chain (seen == previous kept)."""
        for s in self.stages:
            s.check_balanced()
        for prev, cur in zip(self.stages, self.stages[1:], strict=False):
            if cur.total.seen != prev.total.kept:
                raise FunnelError(
                    f"stage {cur.stage} saw {cur.total.seen} samples but {prev.stage} kept {prev.total.kept}"
                )

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows (stage, source, seen, kept, dropped_<reason>...) for tables and cards."""
        out = []
        for s in self.stages:
            for source, c in [("all", s.total), *sorted(s.by_source.items())]:
                row: dict[str, Any] = {"stage": s.stage, "source": source, "seen": c.seen, "kept": c.kept}
                row.update({f"dropped_{r}": n for r, n in sorted(c.dropped.items())})
                out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Funnel:
        return cls([StageStats.from_dict(s) for s in d["stages"]])
