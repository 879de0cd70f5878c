"""Whole-file writes: a crash leaves either the old file or the new one, never half of one.

Locally a temp file is renamed onto the name; on object storage (no rename) the object is written
in one PUT, which appears entire or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core import storage

_UMASK = os.umask(0o022)  # read once: os.umask can only be read by setting it
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the same directory; rename it onto ``path`` only if the block succeeds.

    For a URL the temp file is local and uploaded once the block succeeds."""
    if storage.is_remote(path):
        with tempfile.TemporaryDirectory(prefix="curation-write-") as tmp:
            tmp_path = Path(tmp) / storage.location(path).name
            yield tmp_path
            storage.upload(tmp_path, path)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide outputs from the group
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    if storage.is_remote(path):
        storage.write_bytes(path, data)
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: str | Path, table: pa.Table) -> None:
    if storage.is_remote(path):
        storage.write_bytes(path, storage.parquet_bytes(table))
        return
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_json(path: str | Path) -> Any:
    return json.loads(storage.read_text(path))
