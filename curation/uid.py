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
    """Hex uids -> structured array of dtype ``u8,u8`` (unsorted, duplicates kept)."""
    if isinstance(uids, pa.ChunkedArray | pa.Array):
        uids = uids.to_pylist()
    out = np.empty(len(uids), dtype=UID_DTYPE)
    if len(uids) == 0:
        return out
    raw = bytes.fromhex("".join(normalize_uid(u) for u in uids))
    halves = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    out["f0"] = halves[:, 0]
    out["f1"] = halves[:, 1]
    return out


def array_to_uids(arr: np.ndarray) -> list[str]:
    """Structured ``u8,u8`` array -> hex uids, in the array's order."""
    halves = np.empty((len(arr), 2), dtype=">u8")
    halves[:, 0] = arr["f0"]
    halves[:, 1] = arr["f1"]
    raw = halves.tobytes().hex()
    return [raw[i : i + UID_HEX_LEN] for i in range(0, len(raw), UID_HEX_LEN)]
