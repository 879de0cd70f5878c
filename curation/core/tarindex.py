"""Random access to webdataset members: an index of (offset, size) per member, and positional reads.

A reshard reads a subset's samples from many pool tars, and with shuffling in arbitrary order.
Streaming every pool tar per output shard would read the pool many times over; instead the plan
records where each wanted member's bytes lie in its (uncompressed) tar, and writers read exactly
those bytes with ``os.pread``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    ext: str
    offset: int
    size: int


def index_tar(
    path: Path, keys: Container[str] | None = None, damage: list[TarDamage] | None = None
) -> dict[str, list[Member]]:
    """Members of ``path`` grouped by sample key (only ``keys``, if given), with their byte ranges.

    Reads only the 512-byte headers (one ``pread`` each; ``tarfile`` costs ~5x more per member,
    which dominated a reshard). Handles ustar names with prefixes, pax ``path``/``size`` records
    and GNU long names. A truncated or corrupt tar keeps the members before the damage (with a
    warning); lost members are simply absent, and what cut the tar short goes to ``damage``, so
    callers count those samples as ``truncated_tar``.
    """
    out: dict[str, list[Member]] = {}
    for name, offset, size in member_ranges(path, damage):
        key, _, ext = name.rpartition("/")[2].partition(".")  # Path(name).name cost 40% of the scan
        if keys is None or key in keys:
            out.setdefault(key, []).append(Member(ext, offset, size))
    return out


def tar_damage(path: Path) -> str | None:
    """Why ``path`` is not a whole tar (cut short, a corrupt header), or None when it is whole."""
    try:
        for _ in _regular_members(path):
            pass
    except TarDamage as exc:
        return str(exc)
    return None


def iter_members(
    path: Path, damage: list[TarDamage] | None = None, select: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each whole regular member, in tar order, up to any damage.

    Every stage that streams a tar reads it through here, so a tar cut short (or with a corrupt
    header) yields every member before the damage, each one whole, and then ends; what cut it short
    is appended to ``damage`` (callers count the samples they did not get as ``truncated_tar``).
    ``select(name)`` is called on every member name in order; only selected members' bytes are read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        for name, offset, size in member_ranges(path, damage):
            if select is None or select(name):
                yield name, os.pread(fd, size, offset)
    finally:
        os.close(fd)


KeyOf = Callable[[str], tuple[str | None, str]]  # member name -> (sample key, extension)


def iter_groups(
    path: Path,
    key_of: KeyOf,
    damage: list[TarDamage] | None = None,
    select: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples (key, {extension: bytes}) of adjacent members with one key, up to any damage.

    The sample that is open when the damage hits is yielded only if it is whole: the damaged
    member starts another sample, or (its name unreadable, or the file ending at a member boundary)
    the sample has the same extensions as the sample before it. So a sample that lost a member to
    the cut is lost whole, and one that ended just before the cut survives.
    """
    found: list[TarDamage] = []
    key, files, previous = None, {}, None
    for name, data in iter_members(path, found, select):
        k, ext = key_of(name)
        if k is None:
            continue
        if k != key:
            if key is not None:
                yield key, files
                previous = set(files)
            key, files = k, {}
        files[ext] = data
    if key is not None and (not found or _whole(key, files, previous, found[0], key_of)):
        yield key, files
    if damage is not None:
        damage.extend(found)


def _whole(
    key: str, files: dict[str, bytes], previous: set[str] | None, exc: TarDamage, key_of: KeyOf
) -> bool:
    if exc.name is not None:
        return key_of(exc.name)[0] != key
    return previous is not None and set(files) == previous


def member_ranges(path: Path, damage: list[TarDamage] | None = None) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each whole regular member up to any damage (see iter_members)."""
    try:
        yield from _regular_members(path)
    except TarDamage as exc:
        log.warning("%s is damaged (%s); its later samples are lost", path, exc)
        if damage is not None:
            damage.append(exc)


class TarDamage(ValueError):
    """A header that is not a valid tar header, or data that runs past the end of the file.

    ``name`` is the member whose data is cut, when its header could be read.
    """

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


def _regular_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file, from the headers alone."""
    file_size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, long_name, pax = 0, None, {}
        while True:
            header = os.pread(fd, BLOCK, pos)
            if len(header) < BLOCK:
                raise TarDamage(f"no end-of-archive marker (file ends at {pos + len(header)})")
            if header == ZERO_BLOCK:
                return
            _check_header(header, pos)
            size = int(pax.get("size", _number(header[124:136])))
            kind = header[156:157]
            offset = pos + BLOCK
            if offset + size > file_size:
                regular = kind in (b"0", b"\0", b"7")
                name = (pax.get("path") or long_name or _ustar_name(header)) if regular else None
                raise TarDamage(f"member {name or ''} at {pos} ends past the end of the file", name)
            if kind in (b"x", b"L"):
                data = os.pread(fd, size, offset)
                if kind == b"x":
                    pax = _pax_records(data)
                else:
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind in (b"0", b"\0", b"7"):
                name = pax.get("path") or long_name or _ustar_name(header)
                if not name.endswith("/"):  # old tars mark directories by a trailing slash only
                    yield name, offset, size
                long_name, pax = None, {}
            elif kind != b"g":
                long_name, pax = None, {}  # directories, links, ...: not samples
            pos = offset + (size + BLOCK - 1) // BLOCK * BLOCK
    finally:
        os.close(fd)


BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)


def _check_header(header: bytes, pos: int) -> None:
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError as exc:
        raise TarDamage(f"bad header checksum field at {pos}") from exc
    if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise TarDamage(f"header checksum mismatch at {pos}")


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """``LEN key=value\\n`` records of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
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
