"""Subsets: which pool samples a curated set contains, in DataComp's file format.

A subset is a sorted ``.npy`` of dtype ``u8,u8`` (uid high and low 64 bits), exactly what
DataComp's resharder loads, plus ``<name>.json`` beside it saying how it was made. A uid that
appears k times means "write this sample k times" (upsampling), so the set operations here are
multiset operations on counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation import __version__
from curation.core import storage
from curation.core.io import atomic_write_bytes, atomic_write_json, read_json
from curation.core.uid import UID_DTYPE, array_to_uids, uids_to_array


class SubsetError(ValueError):
    """A subset file that is not in DataComp's format."""


@dataclass
class Subset:
    """A sorted multiset of uids with the manifest that explains it."""

    uids: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.uids.dtype != UID_DTYPE:
            raise SubsetError(f"subset dtype is {self.uids.dtype}, expected {UID_DTYPE}")
        if not _is_sorted(self.uids):
            self.uids = np.sort(self.uids, kind="stable")

    @classmethod
    def from_hex(cls, uids: Sequence[str], manifest: dict[str, Any] | None = None) -> Subset:
        return cls(uids_to_array(uids), manifest or {})

    def __len__(self) -> int:
        return len(self.uids)

    def hex(self) -> list[str]:
        return array_to_uids(self.uids)

    def unique_count(self) -> int:
        return len(self.counts()[1])

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct uids (sorted) and how many times each is to be written (O(n): uids are sorted)."""
        if len(self.uids) == 0:
            return self.uids[:0], np.zeros(0, dtype=np.int64)
        starts = np.r_[0, np.flatnonzero(self.uids[1:] != self.uids[:-1]) + 1]
        return self.uids[starts], np.diff(np.r_[starts, len(self.uids)])

    def contains(self, uids: np.ndarray) -> np.ndarray:
        """Membership mask for a ``u8,u8`` array of uids (vectorised, sorted search)."""
        if len(self.uids) == 0:
            return np.zeros(len(uids), dtype=bool)
        pos = np.searchsorted(self.uids, uids)
        pos = np.minimum(pos, len(self.uids) - 1)
        return self.uids[pos] == uids

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.npy) and its manifest atomically; returns the .npy path (local or a URL)."""
        path = storage.location(path)
        if path.suffix != ".npy":
            path = path.with_suffix(".npy")
        import io

        buf = io.BytesIO()
        np.save(buf, self.uids, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
        manifest = {
            "format": "datacomp-uid-subset",
            "dtype": "u8,u8",
            "count": len(self),
            "unique": self.unique_count(),
            "code_version": __version__,
            **self.manifest,
        }
        atomic_write_json(manifest_path(path), manifest)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Subset:
        path = storage.location(path)
        try:
            arr = storage.load_npy(path)
        except (OSError, ValueError) as exc:
            raise SubsetError(f"cannot read subset {path}: {exc}") from exc
        if arr.dtype != UID_DTYPE:
            raise SubsetError(f"{path}: dtype {arr.dtype}, expected {UID_DTYPE} (DataComp subset format)")
        mpath = manifest_path(path)
        manifest = read_json(mpath) if mpath.exists() else {}
        return cls(arr, manifest)


def _is_sorted(uids: np.ndarray) -> bool:
    """O(n) check; numpy's structured sort is slow even on sorted input (a generic compare per pair)."""
    h, lo = uids["f0"], uids["f1"]
    return bool(((h[1:] > h[:-1]) | ((h[1:] == h[:-1]) & (lo[1:] >= lo[:-1]))).all())


def manifest_path(npy_path: Path) -> Path:
    return npy_path.with_suffix(".json")


def _multiset(a: Subset, b: Subset, combine: str) -> np.ndarray:
    ua, ca = a.counts()
    ub, cb = b.counts()
    keys = np.union1d(ua, ub)
    counts_a = np.zeros(len(keys), dtype=np.int64)
    counts_b = np.zeros(len(keys), dtype=np.int64)
    counts_a[np.searchsorted(keys, ua)] = ca
    counts_b[np.searchsorted(keys, ub)] = cb
    if combine == "union":
        counts = np.maximum(counts_a, counts_b)
    elif combine == "intersection":
        counts = np.minimum(counts_a, counts_b)
    elif combine == "difference":
        counts = np.where(counts_b > 0, 0, counts_a)
    elif combine == "sum":
        counts = counts_a + counts_b
    else:  # pragma: no cover - internal
        raise ValueError(combine)
    return np.repeat(keys, counts)


def _op_manifest(op: str, parts: Sequence[Subset]) -> dict[str, Any]:
    return {"operation": op, "inputs": [p.manifest.get("name", "?") for p in parts]}


def union(a: Subset, b: Subset) -> Subset:
    """Every uid of either; a repeated uid keeps its larger multiplicity."""
    return Subset(_multiset(a, b, "union"), _op_manifest("union", [a, b]))


def intersection(a: Subset, b: Subset) -> Subset:
    """uids in both; multiplicity is the smaller of the two."""
    return Subset(_multiset(a, b, "intersection"), _op_manifest("intersection", [a, b]))


def difference(a: Subset, b: Subset) -> Subset:
    """uids of ``a`` that are not in ``b`` at all."""
    return Subset(_multiset(a, b, "difference"), _op_manifest("difference", [a, b]))


def concat(a: Subset, b: Subset) -> Subset:
    """Multiset sum: multiplicities add (mixing two sets that share samples upsamples them)."""
    return Subset(_multiset(a, b, "sum"), _op_manifest("concat", [a, b]))


def repeat(a: Subset, times: int) -> Subset:
    """Every uid ``times`` times (an integer-weight upsample)."""
    if times < 0:
        raise ValueError("times must be >= 0")
    return Subset(
        np.repeat(a.uids, times), {"operation": f"repeat x{times}", "inputs": [a.manifest.get("name")]}
    )
