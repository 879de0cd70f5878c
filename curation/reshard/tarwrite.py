"""A tar writer for byte copies: prebuilt ustar headers and large vectored writes.

``webdataset.TarWriter`` goes through ``tarfile`` for every member (a ``TarInfo``, its header
built field by field, a ``BytesIO`` copy, a small write per member), which cost more than the
reads in a reshard. Here a member's header is a template with only its name, size and checksum
filled in, and header, data and padding are handed to the kernel together in ``os.writev`` calls
of several MiB, with the data as views of the bytes read from the pool (no copy in Python).

The output is byte-identical to what ``webdataset.TarWriter(encoder=False, mtime=M)`` writes
(tarfile's pax format, mode 0444, owner ``bigdata``, ``tarfile``'s end-of-archive and record padding), which
``tests/test_reshard.py`` checks, so readers see no change.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from types import TracebackType

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
ZEROS = bytes(RECORD)
FLUSH_BYTES = 8 << 20  # one writev per this many bytes ...
FLUSH_PARTS = 1000  # ... or this many buffers (IOV_MAX is 1024 on Linux; one add queues at most 3)
MAX_NAME = 100  # a longer name needs a pax record: left to tarfile
MAX_SIZE = 8**11 - 1  # the largest size 11 octal digits hold: larger ones are left to tarfile


def _template(mtime: int, mode: int, user: str) -> bytes:
    """The header tarfile writes for a member with an empty name and size 0."""
    info = tarfile.TarInfo("")
    info.mtime, info.mode, info.uname, info.gname = mtime, mode, user, user
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


class TarSink:
    """Appends members to a new uncompressed tar file; ``close`` writes the end-of-archive."""

    def __init__(self, path: str | Path, mtime: int, mode: int = 0o444, user: str = "bigdata") -> None:
        self.mtime, self.mode, self.user = mtime, mode, user
        template = bytearray(_template(mtime, mode, user))
        template[148:156] = b" " * 8  # checksum field counts as spaces while summing
        self._template = bytes(template)
        self._base_sum = sum(self._template) - sum(self._template[124:136])  # less name (zeros) and size
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._parts: list[bytes | memoryview] = []
        self._pending = 0
        self.offset = 0  # bytes of archive written so far (headers, data, padding)

    def add(self, name: str, data: bytes | memoryview) -> None:
        size = len(data)
        parts = self._parts
        header = self.header(name, size)  # one block, or more with a pax record
        parts.append(header)
        pad = -size % BLOCK
        if size:
            parts.append(data)
            if pad:
                parts.append(ZEROS[:pad])
        self._pending += len(header) + size + pad
        if self._pending >= FLUSH_BYTES or len(parts) >= FLUSH_PARTS:
            self._flush()

    def header(self, name: str, size: int) -> bytes:
        """The header of a regular member as ``tarfile`` (pax format, its default) writes it: one
        ustar block for an ASCII name of up to 100 bytes, else tarfile's own pax header."""
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_NAME or size > MAX_SIZE or not raw.isascii():  # needs a pax record
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, self.mtime, self.mode
            info.uname = info.gname = self.user
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        size_field = b"%011o\0" % size
        checksum = self._base_sum + sum(raw) + sum(size_field)
        t = self._template
        return b"".join(
            (
                raw,
                bytes(MAX_NAME - len(raw)),
                t[100:124],
                size_field,
                t[136:148],
                b"%06o\0 " % checksum,
                t[156:],
            )
        )

    def _flush(self) -> None:
        parts, pending = self._parts, self._pending
        self._parts, self._pending = [], 0
        while parts:
            written = os.writev(self._fd, parts)
            self.offset += written
            pending -= written
            parts = _advance(parts, written) if pending else []

    def close(self) -> None:
        """End-of-archive (two zero blocks) and padding to a whole 10 KiB record, as tarfile does."""
        if self._fd < 0:
            return
        end = self.offset + self._pending + 2 * BLOCK
        tail = 2 * BLOCK + (-end % RECORD)
        self._parts.append(ZEROS[:tail] if tail <= RECORD else bytes(tail))
        self._pending += tail
        self._flush()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> TarSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        elif self._fd >= 0:  # the runner discards the staging file; just release the descriptor
            os.close(self._fd)
            self._fd = -1


def _advance(parts: list[bytes | memoryview], written: int) -> list[bytes | memoryview]:
    """What remains of ``parts`` after a short ``writev`` of ``written`` bytes."""
    for i, part in enumerate(parts):
        if written < len(part):
            return [memoryview(part)[written:], *parts[i + 1 :]]
        written -= len(part)
    return []
