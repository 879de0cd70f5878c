"""Sample identity: a 128-bit uid per sample, stored as 32 hex chars or as two uint64 halves.

DataComp ships its own 32-hex uid per sample; other crawls have none, so we derive one from
``url + "\\n" + caption``. The hash is fixed (BLAKE2b-128) so the same pair gets the same uid on
every run and machine, which is what makes subsets portable between pools and engines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UID_HEX_LEN = 32
UID_DTYPE = np.dtype("u8,u8")  # DataComp's subset dtype: fields f0 (high 64 bits), f1 (low 64 bits)


class UidError(ValueError):
    """A uid that is not 32 hexadecimal characters."""


def compute_uid(url: str, caption: str | None) -> str:
    """The uid of a pair that carries none: BLAKE2b-128 of ``url + "\\n" + caption``."""
    text = f"{url}\n{caption or ''}".encode("utf-8", errors="surrogatepass")
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def compute_uids(urls: Iterable[str], captions: Iterable[str | None]) -> list[str]:
    return [compute_uid(u, c) for u, c in zip(urls, captions, strict=True)]


def normalize_uid(uid: str) -> str:
    """Lower-case and check a source uid, so 'ABC..' and 'abc..' are the same sample."""
    u = uid.strip().lower()
    if len(u) != UID_HEX_LEN:
        raise UidError(f"uid {uid!r} is not {UID_HEX_LEN} hex characters")
    try:
        int(u, 16)
    except ValueError as exc:
        raise UidError(f"uid {uid!r} is not hexadecimal") from exc
    return u


def uids_to_array(uids: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Hex uids (any case) -> structured array of dtype ``u8,u8`` (unsorted, duplicates kept)."""
    if not isinstance(uids, pa.ChunkedArray | pa.Array):
        uids = pa.array(list(uids), pa.string())
    return hex_column_to_array(uids)


def array_to_uids(arr: np.ndarray) -> list[str]:
    """Structured ``u8,u8`` array -> lower-case hex uids, in the array's order."""
    return array_to_hex_column(arr).to_pylist()


# Vectorised conversion: the 32 ASCII hex characters of every uid are viewed as an (n, 32) byte
# matrix and decoded with numpy, so millions of uids convert without a Python string each.
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUE[_c] = 10 + _i
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _as_string_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    if pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    if not pa.types.is_string(column.type):
        raise UidError(f"uid column has type {column.type}, expected strings of {UID_HEX_LEN} hex chars")
    return column


def hex_column_to_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow strings of 32 hex chars (any case) -> ``u8,u8`` array, in the column's order."""
    arr = _as_string_array(column)
    out = np.empty(len(arr), dtype=UID_DTYPE)
    if len(arr) == 0:
        return out
    if arr.null_count:
        raise UidError(f"{arr.null_count} uids are null")
    lengths = pc.binary_length(arr).to_numpy()
    if (lengths != UID_HEX_LEN).any():
        bad = arr[int(np.flatnonzero(lengths != UID_HEX_LEN)[0])].as_py()
        raise UidError(f"uid {bad!r} is not {UID_HEX_LEN} hex characters")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    nibbles = _HEX_VALUE[data].reshape(len(arr), UID_HEX_LEN)
    if (nibbles == 255).any():
        row = int(np.flatnonzero((nibbles == 255).any(axis=1))[0])
        raise UidError(f"uid {arr[row].as_py()!r} is not hexadecimal")
    packed = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2])
    halves = packed.view(">u8")
    out["f0"] = halves[:, 0]
    out["f1"] = halves[:, 1]
    return out


def array_to_hex_column(arr: np.ndarray) -> pa.Array:
    """``u8,u8`` array -> Arrow strings of 32 lower-case hex chars, in the array's order."""
    n = len(arr)
    halves = np.empty((n, 2), dtype=">u8")
    halves[:, 0] = arr["f0"]
    halves[:, 1] = arr["f1"]
    raw = halves.view(np.uint8).reshape(n, 16)
    chars = np.empty((n, UID_HEX_LEN), dtype=np.uint8)
    chars[:, 0::2] = _HEX_DIGITS[raw >> 4]
    chars[:, 1::2] = _HEX_DIGITS[raw & 0x0F]
    offsets = np.arange(0, (n + 1) * UID_HEX_LEN, UID_HEX_LEN, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
