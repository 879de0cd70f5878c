"""Reading the pool's files where they may be objects (see :mod:`curation.core.storage`): what
pyarrow needs a file handle for."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core import storage


def parquet_metadata(file: Path) -> pq.FileMetaData:
    """A parquet file's footer (a local path or a URL: only the footer is read)."""
    file = storage.location(file)
    if not storage.is_remote(file):
        return pq.read_metadata(file)
    with storage.storage_errors(file, "read"), file.open("rb") as f:
        return pq.read_metadata(f)


def read_row_group(file: Path, group: int) -> pa.Table:
    """Row group ``group`` of a parquet file (a local path or a URL)."""
    file = storage.location(file)
    if not storage.is_remote(file):
        return pq.ParquetFile(file).read_row_group(group)
    with storage.storage_errors(file, "read"), file.open("rb") as f:
        return pq.ParquetFile(f).read_row_group(group)
