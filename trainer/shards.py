"""A directory of training shards as the trainer sees it: tar list, sample counts, provenance.

Training shards (what resharding writes) are ``DIR/00000.tar ...`` with ``DIR/sizes.json``. The
sample counts come from ``sizes.json`` only, never from guessing, because both budget modes are
defined by them; a tar that ``sizes.json`` does not list (or the reverse) is an error.

``DIR`` may be a URL (``s3://bucket/shards``): it is listed once, and the trainers read its tars
through webdataset ``pipe:`` URLs that stream each object through fsspec
(:func:`curation.core.storage.pipe_url`: ``pipe:PYTHON -m curation.core.storage cat URL``), which
stock open_clip_train accepts as ``--train-data``. Starting a Python per shard costs a second or
more (importing s3fs), so the project's training processes install :func:`install_fsspec_opener`:
webdataset then opens exactly those ``pipe:`` URLs in-process through fsspec (same bytes); any
other ``pipe:`` command still runs as a command.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upath import UPath

from curation.core import storage
from curation.core.io import read_json

SIZES_FILE = "sizes.json"
MANIFEST_NAMES = ("subset.json", "manifest.json")


class ShardError(ValueError):
    """A shards directory that does not follow the training-shard contract."""


@dataclass(frozen=True)
class ShardSet:
    directory: UPath  # a local path or a URL
    tars: tuple[str, ...]  # file names, sorted
    sizes: dict[str, int]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.directory)

    @property
    def paths(self) -> list[str]:
        """Where each tar is (local paths or URLs)."""
        return [str(self.directory / t) for t in self.tars]

    @property
    def urls(self) -> list[str]:
        """Each tar as webdataset opens it: its local path, or a ``pipe:`` URL streaming the object."""
        return [self._wds(p) for p in self.paths]

    def _wds(self, path: str) -> str:
        return storage.pipe_url(path) if self.remote else path

    def url_spec(self) -> str:
        """The ``--train-data`` string: a brace range when names are consecutive, else ``::``-joined.

        On object storage each part is ``pipe:PYTHON -m curation.core.storage cat URL``; webdataset
        (open_clip_train's ``expand_urls``) expands the braces inside the command, shard by shard.
        """
        stems = [Path(t).stem for t in self.tars]
        if all(re.fullmatch(r"\d+", s) for s in stems) and len({len(s) for s in stems}) == 1:
            first, last = int(stems[0]), int(stems[-1])
            if [int(s) for s in stems] == list(range(first, last + 1)):
                if first == last:
                    return self._wds(str(self.directory / self.tars[0]))
                width = len(stems[0])
                return self._wds(str(self.directory / f"{{{first:0{width}d}..{last:0{width}d}}}.tar"))
        return "::".join(self.urls)

    def manifest(self) -> dict[str, Any] | None:
        """The subset manifest the shards were made from, when resharding left one beside them."""
        for name in MANIFEST_NAMES:
            path = self.directory / name
            if path.exists():
                return {"file": name, **read_json(path)}
        return None


def open_shards(directory: str | Path | UPath) -> ShardSet:
    """The shards in ``directory`` (a local folder or a URL), checked against its ``sizes.json``."""
    directory = storage.location(directory)
    if not storage.is_remote(directory):
        directory = storage.location(Path(directory).resolve())
        if not directory.is_dir():
            raise ShardError(f"{directory}: not a directory of training shards")
    names = {p.name for p in storage.list_files(directory)}  # one listing on object storage
    if storage.is_remote(directory) and not names:
        raise ShardError(f"{directory}: no training shards there (nothing under that prefix)")
    tars = sorted(n for n in names if n.endswith(".tar"))
    if not tars:
        raise ShardError(f"{directory}: no .tar shards")
    sizes_path = directory / SIZES_FILE
    if SIZES_FILE not in names:
        raise ShardError(f"{directory}: no {SIZES_FILE} (the trainer needs the sample count of every shard)")
    try:
        raw = json.loads(storage.read_text(sizes_path))
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


# ---------------------------------------------------------------- reading shards on object storage

CAT_ARGS = ["-m", "curation.core.storage", "cat"]  # what storage.pipe_url runs, after the interpreter
_SHELL_PIPE: Any = None  # webdataset's own pipe: opener, for every other command


def piped_url(url: str) -> str | None:
    """The object a ``pipe:`` URL of :func:`curation.core.storage.pipe_url` streams (else None)."""
    if not url.startswith("pipe:"):
        return None
    try:
        args = shlex.split(url[len("pipe:") :])
    except ValueError:
        return None
    return args[4] if len(args) == 5 and args[1:4] == CAT_ARGS else None


def _open_pipe(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    target = piped_url(url)
    if target is None or mode != "rb":
        return _SHELL_PIPE(url, mode, bufsize, **kw)
    loc = storage.location(target)
    with storage.storage_errors(loc, "read"):
        return loc.open("rb")


def install_fsspec_opener() -> None:
    """Make webdataset, in this process and the loader workers it forks, open the shards' own
    ``pipe:`` URLs in-process through fsspec instead of starting a reader process per shard."""
    global _SHELL_PIPE
    from webdataset.gopen import gopen_schemes  # the dispatch table webdataset's gopen reads

    storage.configure_from_env()
    if gopen_schemes["pipe"] is not _open_pipe:
        _SHELL_PIPE = gopen_schemes["pipe"]
        gopen_schemes["pipe"] = _open_pipe
