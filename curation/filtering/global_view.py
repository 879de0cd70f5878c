"""Filters that need a view over the whole pool (deduplication, clustering): two phases, one mechanism.

Phase 1, :meth:`GlobalFilter.prepare`, runs once in the driver before any shard (the filter job's
``prepare``, which every engine's ``run_job`` calls). It gathers what it needs over all shards out
of core (DuckDB over parquet, or one shard at a time), makes its global decision (duplicate
groups, clusters) and writes a small uid-keyed lookup table per shard, ``NNNNN.parquet``, into the
folder the job gives it: ``POOL/attributes/<job>/_prepared/<filter>/``. Phase 1 always writes into
a local staging folder; :func:`run_prepare` then publishes it, with a rename on local disk and, on
object storage (a pool at a URL), by uploading the files and its marker last.

Phase 2 is the ordinary per-shard filter: the job joins the shard's lookup onto the samples like
any other :class:`~curation.core.stage.SideInput`, and ``verdict`` reads the joined columns. Nothing
large is pickled to workers, every engine reads the same files, a rerun reuses a finished
phase 1 (its folder carries a marker with the filter's config), and the lookups stay on disk for
inspection.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from upath import UPath

from curation.core import storage
from curation.core.config import ConfigError, ConfigModel
from curation.core.io import atomic_write_json, atomic_write_parquet, read_json
from curation.core.pool import Pool
from curation.core.progress import shard_progress
from curation.core.stage import ConfiguredFilter, Filter, SideInput

log = logging.getLogger(__name__)

MARKER = "_done.json"
T = TypeVar("T")


class GlobalFilter(Filter):
    """A filter whose per-row verdict depends on other shards; see the module docstring."""

    lookup_columns: ClassVar[tuple[str, ...]] = ()  # columns of the per-shard lookup ``prepare`` writes

    def __init__(self, cfg: ConfiguredFilter) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.prepared_dir: UPath | None = None  # set by the filter job before phase 1 (a path or a URL)
        # set by run_prepare while phase 1 runs: a folder every worker of the engine sees, for the
        # inputs and outputs of shard jobs phase 1 schedules (its local ``out`` where the pool is local)
        self.shared_dir: UPath | None = None
        # set by the filter job while phase 1 runs: run_job on the job's engine, for work split in shards
        self.schedule: Callable[[Any], Any] | None = None

    @abstractmethod
    def prepare(self, pool: Pool, out: Path) -> None:
        """Phase 1: write ``out/<shard>.parquet`` (``uid`` + :attr:`lookup_columns`) for every shard.

        ``out`` is a local staging folder, whatever the pool's storage."""

    def fingerprint(self, pool: Pool) -> dict[str, Any]:
        """What phase 1's result depends on; a finished phase 1 is reused only when this matches."""
        return {"kind": self.kind, "config": self.cfg.model_dump(mode="json"), "shards": pool.shard_ids()}

    def side_inputs(self, pool: Pool) -> list[SideInput]:
        if self.prepared_dir is None:
            raise RuntimeError(f"global filter {self.name!r} has no phase-1 folder; run it through FilterJob")
        return [SideInput(self.prepared_dir, self.lookup_columns)]


def run_prepare(
    f: GlobalFilter,
    pool: Pool,
    out: Path | UPath,
    before_publish: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Phase 1 with the runner's guarantees: skipped when already done, atomic, complete for every shard.

    Returns the shards whose lookup is new or differs from the previous phase 1 (every shard on a
    first run, none when reused). A pool that gained shards since (``curate download --append``)
    gets phase 1 again over the union; only shards whose lookup changed need filtering again.
    ``before_publish(changed)`` is called with them before the new lookups replace the old ones
    (and never when phase 1 is reused), so what it records about them survives a kill: a killed
    run has not published, and the next one compares with the same old lookups again.

    ``out`` may be a URL: phase 1 then runs in a local temp folder, the previous result is deleted
    (its marker first), the new files are uploaded and the marker is written last, so a killed
    upload leaves no marker and the next run does phase 1 again. Shard jobs that phase 1 schedules
    share ``out``'s sibling ``.work-<name>`` prefix (:attr:`GlobalFilter.shared_dir`), deleted after.
    """
    out = storage.location(out)
    fingerprint = f.fingerprint(pool)
    marker = out / MARKER
    grown = False
    if marker.exists():
        done = read_json(marker).get("fingerprint") or {}
        if done == fingerprint:
            log.info("filter %s: reusing phase 1 in %s", f.name, out)
            return []
        grown = _only_new_shards(done, fingerprint)
        if not grown:
            raise ConfigError(
                f"filter {f.name!r}: {out} was prepared with a different config or pool "
                f"(config then: {done.get('config')}, now: {fingerprint['config']}); "
                "delete that folder or use another job name"
            )
        log.info("filter %s: the pool has new shards; phase 1 again over all of them", f.name)
    remote = storage.is_remote(out)
    if remote:
        staging = Path(tempfile.mkdtemp(prefix=f"curation-prepare-{out.name}-"))
        shared = out.parent / f".work-{out.name}"
        storage.remove(shared, recursive=True)  # what a killed phase 1 left
    else:
        staging = Path(out.parent / f".staging-{out.name}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shared = storage.location(staging)
    f.shared_dir = shared
    try:
        f.prepare(pool, staging)
        shards = pool.shard_ids()
        missing = [s for s in shards if not (staging / f"{s}.parquet").exists()]
        if missing:
            raise RuntimeError(f"filter {f.name!r}: phase 1 wrote no lookup for shards {missing[:5]}")
        changed = [
            s for s in shards if not (grown and _same_table(out / f"{s}.parquet", staging / f"{s}.parquet"))
        ]
        if before_publish is not None:
            before_publish(changed)
        if remote:
            storage.remove(marker)  # first: from here until the new marker, the folder is not trusted
            storage.remove(out, recursive=True)
            storage.upload_dir(staging, out)
            atomic_write_json(marker, {"fingerprint": fingerprint})
        else:
            atomic_write_json(staging / MARKER, {"fingerprint": fingerprint})
            shutil.rmtree(out, ignore_errors=True)
            os.replace(staging, out)
        return changed
    finally:
        f.shared_dir = None
        shutil.rmtree(staging, ignore_errors=True)
        if remote:
            storage.remove(shared, recursive=True)


def _only_new_shards(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """The fingerprints differ only by shards added to the pool."""
    rest = {k: v for k, v in before.items() if k != "shards"}
    return rest == {k: v for k, v in now.items() if k != "shards"} and set(before.get("shards", [])) < set(
        now.get("shards", [])
    )


FLOAT_TOLERANCE = 1e-5  # float lookups (similarities) vary in the last bits with BLAS summation order


def _same_table(a: Path | UPath, b: Path) -> bool:
    """Same lookup rows in any order (phase 1 may reorder a shard's rows), floats to ``FLOAT_TOLERANCE``.

    ``a`` (the previous lookup) may be a URL."""
    try:
        old = storage.read_parquet(a).sort_by("uid")
    except FileNotFoundError:
        return False
    new = storage.read_parquet(b).sort_by("uid")
    if old.schema != new.schema or old.num_rows != new.num_rows:
        return False
    for name in old.column_names:
        x, y = old[name], new[name]
        if not pa.types.is_floating(x.type):
            if not x.equals(y):
                return False
        elif not (pc.is_null(x).equals(pc.is_null(y)) and np.allclose(
            x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False), rtol=0, atol=FLOAT_TOLERANCE,
            equal_nan=True,
        )):  # fmt: skip
            return False
    return True


def join_side_inputs(table: pa.Table, shard: str, filters: Sequence[Filter], pool: Pool) -> pa.Table:
    """Append each filter's side-input columns for ``shard``, aligned to ``table``'s uids (null if absent)."""
    uids = table["uid"]
    for f in filters:
        for side in f.side_inputs(pool):
            path = side.directory / f"{shard}.parquet"
            where, columns = storage.url(path), ["uid", *side.columns]
            try:
                lookup = read_columns(path, columns)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"filter {f.name!r} needs {where}; has the stage that writes it run?"
                ) from None
            except MissingColumns as exc:
                raise ValueError(
                    f"filter {f.name!r}: {where} lacks columns {exc.absent} (has {exc.names})"
                ) from None
            index = lookup_index(uids, lookup["uid"])
            for col in side.columns:
                table = table.append_column(f.input_column(col), lookup[col].take(index))
    return table


class MissingColumns(ValueError):
    def __init__(self, absent: list[str], names: list[str]) -> None:
        super().__init__(f"columns {absent} absent (has {names})")
        self.absent, self.names = absent, names


def read_columns(path: Path | UPath, columns: list[str]) -> pa.Table:
    """``columns`` of a parquet table at a path or a URL, or :class:`MissingColumns` if it lacks some.

    On object storage the schema and the columns are read through one open file (one metadata
    request, then ranged reads), not two."""
    if not storage.is_remote(path):
        names = storage.read_parquet_schema(path).names
        table = storage.read_parquet(path, columns=columns) if set(columns) <= set(names) else None
    else:
        with storage.storage_errors(path, "read"), path.open("rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            table = parquet.read(columns=columns) if set(columns) <= set(names) else None
    if table is None:
        raise MissingColumns([c for c in columns if c not in names], names)
    return table


def lookup_index(uids: pa.Array | pa.ChunkedArray, lookup_uids: pa.ChunkedArray) -> pa.Array:
    """Row of each uid in ``lookup_uids`` (null where absent; the first row if repeated), case-blind."""
    return pc.index_in(uids, value_set=pc.utf8_lower(lookup_uids).combine_chunks())


def uid_keys(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """32-hex uids as a numpy ``S32`` array: sortable and comparable without a Python object per uid."""
    fixed = pc.cast(uids, pa.binary(32))
    if isinstance(fixed, pa.ChunkedArray):
        fixed = fixed.combine_chunks()
    return np.frombuffer(fixed.buffers()[1], dtype="S32", count=len(fixed), offset=fixed.offset * 32)


def gather_shards(pool: Pool, read: Callable[[str], T], description: str) -> Iterator[tuple[int, str, T]]:
    """Yield ``(index, shard, read(shard))`` over all shards with a progress bar (one shard in memory)."""
    shards = pool.shard_ids()
    with shard_progress(description, len(shards)) as advance:
        for i, shard in enumerate(shards):
            yield i, shard, read(shard)
            advance(None)


def write_shard_lookups(
    out: Path, shards: Sequence[str], batches: Iterable[pa.RecordBatch], schema: pa.Schema
) -> None:
    """Write lookup rows, streamed in ``shard`` order, as ``out/<shard>.parquet`` (empty tables too).

    ``batches`` carry a ``shard`` column plus ``schema``'s columns; only one shard is held in memory,
    so a DuckDB result streamed with ``ORDER BY shard`` never has to fit at once.
    """
    position = {shard: i for i, shard in enumerate(shards)}
    current, parts = -1, []

    def flush_until(stop: int) -> None:
        """Write the current shard's rows, and empty tables for shards without rows, up to ``stop``."""
        nonlocal current, parts
        for i in range(max(current, 0), stop):
            table = pa.concat_tables(parts) if i == current and parts else schema.empty_table()
            atomic_write_parquet(out / f"{shards[i]}.parquet", table)
        current, parts = stop, []

    for batch in batches:
        table = pa.Table.from_batches([batch])
        for shard in pc.unique(table["shard"]).to_pylist():
            i = position.get(shard, -1)
            if i < current:
                raise ValueError(f"lookup rows for shard {shard!r} are unknown or not in shard order")
            if i > current:
                flush_until(i)
            parts.append(table.filter(pc.equal(table["shard"], shard)).select(schema.names).cast(schema))
    flush_until(len(shards))


DEFAULT_SCORE = "clip_score_vit_b_32"  # the score stage's column (and folder) for OpenAI-style ViT-B/32


class AttributeRef(ConfigModel):
    """A column of another stage's attribute table, ``POOL/attributes/<attribute>/NNNNN.parquet``.

    ``attribute`` defaults to the column's own name: the score stage writes its score column
    ``clip_score_<model>`` into the folder of the same name.
    """

    column: str
    attribute: str | None = None

    @property
    def stage(self) -> str:
        return self.attribute or self.column


class ScoreRef(AttributeRef):
    """A per-sample score, e.g. to keep the best member of a duplicate group."""

    column: str = DEFAULT_SCORE


def read_aligned(pool: Pool, shard: str, ref: AttributeRef, uids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``ref``'s column for ``uids`` of one shard (null where the table has no row for a uid)."""
    path = pool.attributes_dir(ref.stage) / f"{shard}.parquet"
    try:
        table = read_columns(path, ["uid", ref.column])
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{storage.url(path)} not found; run the stage that writes {ref.stage!r} first"
        ) from None
    except MissingColumns as exc:
        absent = ", ".join(repr(c) for c in exc.absent)
        raise ValueError(f"{storage.url(path)} has no column {absent}") from None
    return table[ref.column].combine_chunks().take(lookup_index(uids, table["uid"]))
