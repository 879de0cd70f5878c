"""Stage stats counted with numpy over Arrow columns (no Python object per row).

:meth:`curation.stats.StageStats.from_verdicts` walks rows in Python, which is fine for a
filter's shard but not for a builder that labels millions of captions at a time. This counts the
same numbers from dictionary-encoded columns with ``bincount``; the result is a plain
:class:`StageStats`, so it merges and balances like any other.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stats import Counts, FunnelError, StageStats


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
