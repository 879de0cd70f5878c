"""Finding images by id in a folder of files or of webdataset tars, without loading them.

ImageNet comes as ``train/<wnid>/<image_id>.JPEG`` (the id is the file stem) or as webdataset
shards (the id is a sample's ``json`` ``image_id`` when it has one, else its key). The locator
lists where every image lives (file path, or tar + byte offset + size) as an Arrow table, so a
join matches ids to images; readers then open each image exactly where it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

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
    """image_id, container (tar path or ""), path (file path or ""), offset, size, ext for every image."""
    root = Path(root)
    if not root.is_dir():
        raise ImageStoreError(f"images folder not found: {root}")
    tars = sorted(root.rglob("*.tar"))
    parts = []
    if tars:
        for tar in tars:
            cols = _scan_tar(tar)
            n = len(cols["image_id"])
            parts.append(pa.table({**cols, "container": [str(tar)] * n, "path": [""] * n}))
    else:
        ids, paths, exts = [], [], []
        for dirpath, _, files in os.walk(root):
            for name in files:
                stem, _, ext = name.rpartition(".")
                if ext.lower() in IMAGE_EXTS:
                    ids.append(stem)
                    paths.append(os.path.join(dirpath, name))
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


@dataclass
class ImageReader:
    """Reads images where :func:`locate_images` found them, keeping tar files open."""

    _open: dict[str, BinaryIO] = field(default_factory=dict)

    def read(self, container: str, path: str, offset: int, size: int) -> bytes:
        if not container:
            return Path(path).read_bytes()
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
