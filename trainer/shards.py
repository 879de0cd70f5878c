"""A directory of training shards as the trainer sees it: tar list, sample counts, provenance.

Training shards (what resharding writes) are ``DIR/00000.tar ...`` with ``DIR/sizes.json``. The
sample counts come from ``sizes.json`` only, never from guessing, because both budget modes are
defined by them; a tar that ``sizes.json`` does not list (or the reverse) is an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.core.io import read_json

SIZES_FILE = "sizes.json"
MANIFEST_NAMES = ("subset.json", "manifest.json")


class ShardError(ValueError):
    """A shards directory that does not follow the training-shard contract."""


@dataclass(frozen=True)
class ShardSet:
    directory: Path
    tars: tuple[str, ...]  # file names, sorted
    sizes: dict[str, int]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())

    @property
    def paths(self) -> list[str]:
        return [str(self.directory / t) for t in self.tars]

    def url_spec(self) -> str:
        """The ``--train-data`` string: a brace range when names are consecutive, else ``::``-joined."""
        stems = [Path(t).stem for t in self.tars]
        if all(re.fullmatch(r"\d+", s) for s in stems) and len({len(s) for s in stems}) == 1:
            first, last = int(stems[0]), int(stems[-1])
            if [int(s) for s in stems] == list(range(first, last + 1)):
                if first == last:
                    return str(self.directory / self.tars[0])
                width = len(stems[0])
                return str(self.directory / f"{{{first:0{width}d}..{last:0{width}d}}}.tar")
        return "::".join(self.paths)

    def manifest(self) -> dict[str, Any] | None:
        """The subset manifest the shards were made from, when resharding left one beside them."""
        for name in MANIFEST_NAMES:
            path = self.directory / name
            if path.exists():
                return {"file": name, **read_json(path)}
        return None


def open_shards(directory: str | Path) -> ShardSet:
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ShardError(f"{directory}: not a directory of training shards")
    tars = sorted(p.name for p in directory.glob("*.tar"))
    if not tars:
        raise ShardError(f"{directory}: no .tar shards")
    sizes_path = directory / SIZES_FILE
    if not sizes_path.exists():
        raise ShardError(f"{directory}: no {SIZES_FILE} (the trainer needs the sample count of every shard)")
    try:
        raw = json.loads(sizes_path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{sizes_path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ShardError(f"{sizes_path}: expected a mapping of shard name to sample count")
    missing = [t for t in tars if t not in raw]
    absent = [n for n in raw if n not in tars]
    if missing or absent:
        raise ShardError(
            f"{sizes_path} does not match the tars: not listed {missing[:5]}, listed but absent {absent[:5]}"
        )
    sizes = {}
    for name in tars:
        n = raw[name]
        if not isinstance(n, int) or n < 0:
            raise ShardError(f"{sizes_path}: size of {name} is {n!r}, expected a non-negative integer")
        sizes[name] = n
    shard_set = ShardSet(directory, tuple(tars), sizes)
    if shard_set.num_samples == 0:
        raise ShardError(f"{directory}: {SIZES_FILE} counts no samples")
    return shard_set
