"""Finding images by id in a folder of files or of webdataset tars, without loading them.

ImageNet comes as ``train/<wnid>/<image_id>.JPEG`` (the id is the file stem) or as webdataset
shards (the id is a sample's ``json`` ``image_id`` when it has one, else its key). The locator
lists where every image lives (file path, or tar + byte offset + size) as an Arrow table, so a
join matches ids to images; readers then open each image exactly where it is.

The folder may be a URL (:mod:`curation.core.storage`): each tar is copied to a local temp file
for its header scan (one GET), and an image is then read with one ranged request.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
from upath import UPath

from curation.core import storage
from curation.core.tarindex import member_ranges

IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}


class ImageStoreError(ValueError):
    """An images folder with nothing we can read."""


def _scan_tar(path: Path) -> dict[str, list]:
    """Members of one tar: per image its id, offset and size (ids from the sample's json if any)."""
    images: dict[str, tuple[int, int, str]] = {}
    ids: dict[str, str] = {}
    with open(path, "rb") as f:
        for name, offset, size in member_ranges(path):  # a damaged tar: the images before the damage
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
    return cols


def locate_images(root: str | Path) -> pa.Table:
    """image_id, container (tar path or ""), path (file path or ""), offset, size, ext for every image.

    A container or path on object storage is its URL."""
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
            with storage.local_copy(tar) as local:
                cols = _scan_tar(local)
            n = len(cols["image_id"])
            parts.append(pa.table({**cols, "container": [str(tar)] * n, "path": [""] * n}))
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
