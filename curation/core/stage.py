"""The stage and filter abstraction: Arrow record batch in, the same rows with more columns out.

A stage computes attributes (a score, a language label, an embedding). A filter is a stage that
only decides: a keep mask and, for every dropped row, a reason. Filters never remove rows; they
write ``<name>_keep`` and ``<name>_reason`` columns, and selection happens later from these
verdicts, so a threshold sweep never re-runs a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
from upath import UPath

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.registry import Registry
from curation.core.stats import StageStats

if TYPE_CHECKING:
    from curation.core.pool import Pool


@dataclass
class Verdict:
    """Per-row decision of a filter: ``keep[i]``, and ``reason[i]`` (a string) where not kept."""

    keep: np.ndarray
    reason: np.ndarray  # dtype object: None where kept

    @classmethod
    def from_rules(cls, n: int, rules: Sequence[tuple[str, np.ndarray]]) -> Verdict:
        """Combine ``(reason, failed_mask)`` rules; a row gets the reason of the first rule it fails."""
        reason = np.full(n, None, dtype=object)
        for name, failed in rules:
            reason[np.asarray(failed, dtype=bool) & (reason == None)] = name  # noqa: E711
        return cls(keep=reason == None, reason=reason)  # noqa: E711


@dataclass(frozen=True)
class SideInput:
    """Columns of a per-shard table keyed by uid (``directory/NNNNN.parquet``) that a filter reads.

    The filter job joins them onto each shard's samples by uid, under the names
    :meth:`Filter.input_column` gives; a sample missing from the table gets nulls. ``directory`` is a
    :data:`~curation.core.storage.Location`: a local path or a URL (a string or a ``Path`` is turned
    into one).
    """

    directory: UPath
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", storage.location(self.directory))


class Stage(ABC):
    """Adds columns to a record batch. Subclasses are small and know nothing of engines or files."""

    kind: ClassVar[str] = ""  # registry name
    needs_images: ClassVar[bool] = False

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind

    def setup(self) -> None:
        """Load models or lookup tables; called once per worker before the first batch."""

    @abstractmethod
    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Return ``batch`` with this stage's columns appended (same rows, same order)."""


class Filter(Stage):
    """A stage that decides keep/drop per row; the base class writes the verdict columns."""

    config_cls: ClassVar[type[ConfiguredFilter]]  # set by @filter_kind

    @abstractmethod
    def verdict(self, batch: pa.RecordBatch) -> Verdict: ...

    @property
    def keep_column(self) -> str:
        return f"{self.name}_keep"

    @property
    def reason_column(self) -> str:
        return f"{self.name}_reason"

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Attributes worth keeping beside the verdict (e.g. the detected language)."""
        return {}

    def side_inputs(self, pool: Pool) -> list[SideInput]:
        """Other stages' attribute tables this filter reads (e.g. a CLIP score); none by default."""
        return []

    def input_column(self, column: str) -> str:
        """Name under which a side-input column appears in this filter's batches (namespaced per filter)."""
        return f"{self.name}:{column}"

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        v = self.verdict(batch)
        if len(v.keep) != batch.num_rows:
            raise ValueError(f"filter {self.name} returned {len(v.keep)} verdicts for {batch.num_rows} rows")
        cols = {**self.extra_columns(batch), self.keep_column: pa.array(v.keep, pa.bool_())}
        cols[self.reason_column] = pa.array(list(v.reason), pa.string())
        for col, arr in cols.items():
            batch = batch.append_column(col, arr)
        return batch


def funnel_stats(
    table: pa.Table, filters: Sequence[Filter], source_column: str = "source"
) -> list[StageStats]:
    """Sequential funnel over filter verdicts: each filter sees only what earlier ones kept."""
    n = table.num_rows
    alive = np.ones(n, dtype=bool)
    sources = (
        np.asarray(table[source_column].to_pylist(), dtype=object)
        if source_column in table.column_names
        else np.full(n, "unknown", dtype=object)
    )
    out = []
    for f in filters:
        keep = table[f.keep_column].to_numpy(zero_copy_only=False).astype(bool)
        reason = np.asarray(table[f.reason_column].to_pylist(), dtype=object)
        out.append(StageStats.from_verdicts(f.name, keep[alive], reason[alive], sources[alive]))
        alive &= keep
    return out


class ConfiguredFilter(ConfigModel):
    """Base of a filter's config block: ``{kind: ..., name: ...}`` plus the filter's own settings."""

    kind: str
    name: str | None = None


FILTERS: Registry[type[Filter]] = Registry("filter kind", "filters")


def filter_kind(kind: str, config: type[ConfiguredFilter]) -> Callable[[type[Filter]], type[Filter]]:
    """Class decorator: the ``kind`` a filter answers to and its config block's model.

    Registration itself is one entry-point line (``[project.entry-points."clip_curation.filters"]``
    in ``pyproject.toml``, or the same group in a plugin package); its name must equal ``kind``.
    """

    def deco(cls: type[Filter]) -> type[Filter]:
        cls.kind = kind
        cls.config_cls = config
        return cls

    return deco
