"""Finding images by id in a folder of files or of webdataset tars, without loading them.

ImageNet comes as ``train/<wnid>/<image_id>.JPEG`` (the id is the file stem) or as webdataset
shards (the id is a sample's ``json`` ``image_id`` when it has one, else its key). The locator
lists where every image lives (file path, or tar + byte offset + size) as an Arrow table, so a
join matches ids to images; readers then open each image exactly where it is.

The folder may be a URL (:mod:`curation.core.storage`): each tar is copied to a local temp file
for its header scan (one GET), and an image is then read with one ranged request.

A torn tar (cut short, or a corrupt header) gives every image before the damage; the images after
it are gone, and so are their ids. :class:`TornTar` says which tar, why, and which ids it lost when
the tar's img2dataset parquet (``NNNNN.parquet`` beside ``NNNNN.tar``) still lists them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
from upath import UPath

from curation.core import storage
from curation.core.tarindex import TarDamage, member_ranges

log = logging.getLogger(__name__)

IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}


class ImageStoreError(ValueError):
    """An images folder with nothing we can read."""


@dataclass(frozen=True)
class TornTar:
    """A tar of the images folder cut short (or with a corrupt header): its later images are lost.

    ``lost_ids``: the image ids its img2dataset parquet lists as downloaded that the tar no longer
    holds; None when no such listing is there (then any image not found may have been in this tar).
    """

    container: str
    damage: str
    lost_ids: frozenset[str] | None


def _scan_tar(path: Path, damage: list[TarDamage]) -> tuple[dict[str, list], set[str]]:
    """Members of one tar: per image its id, offset and size (ids from the sample's json if any),
    and the sample keys it holds. Damage cutting it short goes to ``damage``."""
    images: dict[str, tuple[int, int, str]] = {}
    ids: dict[str, str] = {}
    with open(path, "rb") as f:
        for name, offset, size in member_ranges(path, damage):  # a damaged tar: the images before the damage
            key, _, ext = Path(name).name.partition(".")
            ext = ext.lower()
            if ext in IMAGE_EXTS:
                images[key] = (offset, size, IMAGE_EXTS[ext])
            elif ext == "json":
                f.seek(offset)
                try:
                    meta = json.loads(f.read(size))
                except ValueError:
                    meta = {}
                if isinstance(meta, dict) and meta.get("image_id") is not None:
                    ids[key] = str(meta["image_id"])
    cols: dict[str, list] = {"image_id": [], "offset": [], "size": [], "ext": []}
    for key, (offset, size, ext) in images.items():
        cols["image_id"].append(ids.get(key, key))
        cols["offset"].append(offset)
        cols["size"].append(size)
        cols["ext"].append(ext)
    return cols, set(images)


def _lost_ids(tar: UPath | Path, found_keys: set[str], found_ids: set[str]) -> frozenset[str] | None:
    """Ids of the images a torn ``tar`` lost, from its img2dataset parquet (``key``, ``status`` and
    ``image_id`` if there): the downloaded rows whose image the tar no longer holds. None when there
    is no such parquet, it cannot be read, or it does not list the keys the tar holds (not its own)."""
    listing = tar.with_suffix(".parquet")
    try:
        with storage.storage_errors(listing, "read"):
            if not listing.exists():
                return None
        table = storage.read_parquet(listing)  # one GET on object storage; a shard's rows are few
    except (OSError, pa.ArrowException) as exc:
        log.warning("%s: cannot read %s (%s); any image not found may be lost", tar, listing, exc)
        return None
    if "key" not in table.column_names:
        return None
    rows = table.select([c for c in ("key", "status", "image_id") if c in table.column_names]).to_pylist()
    keys = {str(r["key"]) for r in rows}
    if not found_keys <= keys:
        return None
    listed = {
        str(r["image_id"]) if r.get("image_id") is not None else str(r["key"])
        for r in rows
        if r.get("status", "success") == "success"
    }
    return frozenset(listed - found_ids)


def locate_images(root: str | Path, torn: list[TornTar] | None = None) -> pa.Table:
    """image_id, container (tar path or ""), path (file path or ""), offset, size, ext for every image.

    A container or path on object storage is its URL. Each torn tar goes to ``torn`` (its images
    before the damage are in the table)."""
    root = storage.location(root)
    remote = storage.is_remote(root)
    if remote:
        storage.check_bucket(root)
    if not root.is_dir():
        raise ImageStoreError(f"images folder not found: {root}")
    files = _remote_files(root) if remote else []
    tars = sorted(root.rglob("*.tar")) if not remote else [f for f in files if f.name.endswith(".tar")]
    parts = []
    if tars:
        for tar in tars:
            damage: list[TarDamage] = []
            with storage.local_copy(tar) as local:
                cols, keys = _scan_tar(local, damage)
            n = len(cols["image_id"])
            parts.append(pa.table({**cols, "container": [str(tar)] * n, "path": [""] * n}))
            if damage and torn is not None:
                torn.append(TornTar(str(tar), str(damage[0]), _lost_ids(tar, keys, set(cols["image_id"]))))
    else:
        ids, paths, exts = [], [], []
        found = (
            [(str(f), f.name) for f in files]
            if remote
            else [(os.path.join(d, name), name) for d, _, names in os.walk(root) for name in names]
        )
        for path, name in found:
            stem, _, ext = name.rpartition(".")
            if ext.lower() in IMAGE_EXTS:
                ids.append(stem)
                paths.append(path)
                exts.append(IMAGE_EXTS[ext.lower()])
        n = len(ids)
        parts.append(
            pa.table(
                {
                    "image_id": ids,
                    "offset": [0] * n,
                    "size": [-1] * n,
                    "ext": exts,
                    "container": [""] * n,
                    "path": paths,
                }
            )
        )
    schema = pa.schema(
        [
            ("image_id", pa.string()),
            ("offset", pa.int64()),
            ("size", pa.int64()),
            ("ext", pa.string()),
            ("container", pa.string()),
            ("path", pa.string()),
        ]
    )
    table = pa.concat_tables([p.cast(schema) for p in parts])
    if table.num_rows == 0:
        raise ImageStoreError(f"{root}: no images (.jpg/.jpeg/.png/.webp files, or webdataset .tar shards)")
    return table


def _remote_files(root: UPath) -> list[UPath]:
    """Every object under ``root`` (at any depth), sorted by its path within it (one listing)."""
    base = root.path.rstrip("/")
    with storage.storage_errors(root, "list"):
        found = root.fs.find(base)
    rel = sorted((name[len(base) + 1 :] for name in found), key=lambda r: r.split("/"))
    return [root / r for r in rel]


@dataclass
class ImageReader:
    """Reads images where :func:`locate_images` found them, keeping tar files open."""

    _open: dict[str, BinaryIO] = field(default_factory=dict)

    def read(self, container: str, path: str, offset: int, size: int) -> bytes:
        if not container:
            return storage.read_bytes(path) if storage.is_remote(path) else Path(path).read_bytes()
        if storage.is_remote(container):  # one ranged request: images are read in index order, not tar order
            loc = storage.location(container)
            with storage.storage_errors(loc, "read"):
                data = loc.fs.cat_file(loc.path, start=offset, end=offset + size)
            if len(data) != size:
                raise OSError(f"{container}: truncated member at offset {offset}")
            return data
        f = self._open.get(container)
        if f is None:
            f = self._open[container] = open(container, "rb")  # noqa: SIM115 - closed in close()
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"{container}: truncated member at offset {offset}")
        return data

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
