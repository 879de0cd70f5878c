"""Random access to webdataset members: an index of (offset, size) per member, and positional reads.

A reshard reads a subset's samples from many pool tars, and with shuffling in arbitrary order.
Streaming every pool tar per output shard would read the pool many times over; instead the plan
records where each wanted member's bytes lie in its (uncompressed) tar, and writers read exactly
those bytes with ``os.pread``.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Member:
    ext: str
    offset: int
    size: int


def index_tar(path: Path, keys: Container[str] | None = None) -> dict[str, list[Member]]:
    """Members of ``path`` grouped by sample key (only ``keys``, if given), with their byte ranges.

    Reads only the tar headers (``tarfile`` seeks over the data). A truncated tar raises
    ``tarfile.ReadError``/``EOFError`` for the caller to record.
    """
    out: dict[str, list[Member]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = Path(info.name).name
            key, _, ext = name.partition(".")
            if keys is not None and key not in keys:
                continue
            out.setdefault(key, []).append(Member(ext, info.offset_data, info.size))
    return out


class TarReader:
    """Positional reads from many tar files, keeping a bounded number of them open."""

    def __init__(self, max_open: int = 64) -> None:
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= self.max_open:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = fd
        else:
            self._fds.move_to_end(path)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{path}: short read at {offset} ({len(data)} of {size} bytes); truncated tar?")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
