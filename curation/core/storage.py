"""Where data lives: a local path or an fsspec URL (``s3://``, ``gs://``, ``hdfs://``, ``az://``,
``memory://``, ``file://``), behind one pathlib-like type.

A :data:`Location` is a :class:`upath.UPath`: a local path is a real :class:`pathlib.Path` (so local
code runs exactly as before), a URL is a path over its fsspec filesystem (``/``, ``exists``,
``glob``, ``open``, ``read_bytes``...). What pathlib cannot do on object storage (parquet and
numpy files, uploads, local copies for libraries that need a file name) is here, once.

Storage options are per protocol and process-wide (fsspec's own config: its JSON files and
``FSSPEC_<PROTOCOL>_<KEY>`` variables work too): :func:`configure` adds a job's
``storage_options`` block, and :func:`worker_env` carries it to Spark and Ray workers. They are
never part of a location, so a location can be written into a manifest, a card or a log as it is;
:func:`redact` removes the secrets of the configured options and of the AWS environment from any
text that leaves the process (error messages, logs, recorded errors).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import fsspec
import fsspec.config
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BeforeValidator, PlainSerializer
from upath import UPath

OPTIONS_ENV = "CURATION_STORAGE_OPTIONS"  # JSON {protocol: {option: value}}: how options reach workers
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")
SECRET_OPTION = re.compile(r"secret|token|password|passwd|credential|sas|account_key|^key$", re.I)
MANGLED_URL = re.compile(r"^([a-z][a-z0-9+.-]*[a-z0-9]):/(?!/)")
_configured: dict[str, dict[str, Any]] = {}
# Never hang on an unreachable endpoint: botocore's defaults wait 60 s per try and retry with backoff.
# No listing cache: other processes (engine workers, reruns) write under the prefixes this one lists,
# and s3fs would keep answering from a listing made before they did (files "missing" after a run).
S3_DEFAULTS = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
    "use_listings_cache": False,
}
for _protocol in ("s3", "s3a"):
    for _key, _value in S3_DEFAULTS.items():
        fsspec.config.conf.setdefault(_protocol, {}).setdefault(_key, _value)


class StorageError(OSError):
    """A location that cannot be read or written; the message names it, never a credential."""


def location(value: str | os.PathLike[str] | UPath) -> UPath:
    """``value`` as a location: URLs keep their protocol, ``file://`` and plain paths become local paths."""
    if isinstance(value, UPath):
        return value
    text = MANGLED_URL.sub(r"\1://", os.fspath(value))  # pathlib.Path("s3://b/k") is "s3:/b/k"
    if text.startswith("file://"):
        text = text[len("file://") :]
    return UPath(text)


def _validate(value: Any) -> UPath:
    if isinstance(value, dict) and "path" in value:  # a UPath pydantic dump
        value = f"{value.get('protocol') or 'file'}://{value['path']}"
    return location(value)


Location = Annotated[UPath, BeforeValidator(_validate), PlainSerializer(lambda p: str(p), return_type=str)]
"""The field type of every path a stage takes: validated from a string, recorded as a string."""


def is_remote(loc: str | os.PathLike[str] | UPath) -> bool:
    """True for a location outside the local file system (where rename, mmap and file names do not exist)."""
    return not isinstance(location(loc), Path)


def url(loc: str | os.PathLike[str] | UPath) -> str:
    """The location as text (a URL or a local path), safe to print or record."""
    return str(location(loc))


# --- options and secrets --------------------------------------------------------------------------


def configure(options: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Add per-protocol storage options (``{s3: {endpoint_url: ...}}``) for this process and its workers."""
    for protocol, opts in (options or {}).items():
        if not isinstance(opts, Mapping):
            raise StorageError(f"storage_options.{protocol} must be a mapping of option: value")
        merged = {**_configured.get(protocol, {}), **opts}
        _configured[protocol] = merged
        fsspec.config.conf[protocol] = {**fsspec.config.conf.get(protocol, {}), **merged}
    if options:
        reset_clients()  # cached clients were built without them


def reset_clients() -> None:
    """Forget cached file-system clients (fsspec keys them by options, not by the environment)."""
    for cls in [fsspec.AbstractFileSystem, *fsspec.registry.values()]:
        cls.clear_instance_cache()


def configure_from_env() -> None:
    """On a worker: apply the options the driver configured (see :func:`worker_env`)."""
    raw = os.environ.get(OPTIONS_ENV)
    if raw:
        configure(json.loads(raw))


def worker_env() -> dict[str, str]:
    """What a worker needs to open the same URLs: the configured options, and the AWS endpoint/region."""
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                                      "AWS_DEFAULT_REGION", "AWS_PROFILE") if k in os.environ}  # fmt: skip
    if _configured:
        env[OPTIONS_ENV] = json.dumps(_configured, sort_keys=True)
    return env


def secrets() -> list[str]:
    """Every secret value this process knows of: configured secret options and secret env variables."""
    found = [os.environ[k] for k in SECRET_ENV if os.environ.get(k)]
    for opts in [*_configured.values(), *fsspec.config.conf.values()]:
        if isinstance(opts, Mapping):
            secret = [str(v) for k, v in opts.items() if SECRET_OPTION.search(str(k)) and v is not None]
            found += [v for v in secret if len(v) >= 4]
    return sorted(set(found), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in secrets():
        text = text.replace(secret, "***")
    return text


# --- reading and writing --------------------------------------------------------------------------


@contextlib.contextmanager
def storage_errors(loc: str | os.PathLike[str] | UPath, action: str) -> Iterator[None]:
    """Turn a file-system error at ``loc`` into one :class:`StorageError` naming the URL and the action."""
    try:
        yield
    except (StorageError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise
    except Exception as exc:  # botocore's errors are not OSErrors
        if not is_remote(loc) and not isinstance(exc, PermissionError):
            raise
        raise StorageError(redact(f"cannot {action} {url(loc)}: {describe(exc)}")) from None


def describe(exc: BaseException) -> str:
    """A one-line reason for a storage failure (botocore's errors are long and nested)."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return redact(text[:300])


def read_bytes(loc: str | os.PathLike[str] | UPath) -> bytes:
    loc = location(loc)
    with storage_errors(loc, "read"):
        return loc.fs.cat_file(loc.path) if is_remote(loc) else Path(loc).read_bytes()


def read_text(loc: str | os.PathLike[str] | UPath) -> str:
    return read_bytes(loc).decode("utf-8")


def write_bytes(loc: str | os.PathLike[str] | UPath, data: bytes) -> None:
    """One object, written whole: on object storage a single PUT (it appears entire or not at all)."""
    loc = location(loc)
    with storage_errors(loc, "write"):
        loc.fs.pipe_file(loc.path, data)


def read_parquet(loc: str | os.PathLike[str] | UPath, columns: list[str] | None = None) -> pa.Table:
    """A parquet file's table; on object storage one GET of the whole object (a pyarrow file
    system would send a HEAD and a ranged GET per column chunk: many round trips per file)."""
    loc = location(loc)
    if not is_remote(loc):
        return pq.read_table(loc, columns=columns)
    return pq.read_table(pa.BufferReader(read_bytes(loc)), columns=columns)


def read_parquet_schema(loc: str | os.PathLike[str] | UPath) -> pa.Schema:
    loc = location(loc)
    if not is_remote(loc):
        return pq.read_schema(loc)
    return pq.read_schema(pa.BufferReader(read_bytes(loc)))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def load_npy(loc: str | os.PathLike[str] | UPath, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` array (memory-mapped only where it is a local file)."""
    loc = location(loc)
    if not is_remote(loc):
        return np.load(loc, mmap_mode="r" if mmap else None, allow_pickle=False)
    with storage_errors(loc, "read"), loc.open("rb") as f:
        return np.load(f, allow_pickle=False)


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def upload(local: Path, loc: str | os.PathLike[str] | UPath) -> None:
    """Copy a local file to ``loc`` (a move where both are local)."""
    loc = location(loc)
    if not is_remote(loc):
        Path(loc).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, loc)
        return
    with storage_errors(loc, "write"):
        loc.fs.put_file(str(local), loc.path)


@contextlib.contextmanager
def local_copy(loc: str | os.PathLike[str] | UPath) -> Iterator[Path]:
    """A local file with ``loc``'s content, for libraries that take only file names (``loc`` if local)."""
    loc = location(loc)
    if not is_remote(loc):
        yield Path(loc)
        return
    with tempfile.TemporaryDirectory(prefix="curation-copy-") as tmp:
        dst = Path(tmp) / (loc.name or "object")
        with storage_errors(loc, "read"):
            loc.fs.get_file(loc.path, str(dst))
        yield dst


@contextlib.contextmanager
def local_dir(loc: str | os.PathLike[str] | UPath) -> Iterator[Path]:
    """A local directory with a copy of ``loc``'s tree (the directory itself if local), read-only use."""
    loc = location(loc)
    if not is_remote(loc):
        yield Path(loc)
        return
    with tempfile.TemporaryDirectory(prefix="curation-copy-") as tmp:
        with storage_errors(loc, "read"):
            loc.fs.get(loc.path.rstrip("/") + "/", tmp + "/", recursive=True)
        yield Path(tmp)


def upload_dir(local: Path, loc: str | os.PathLike[str] | UPath) -> None:
    """Copy a local directory tree to ``loc`` (files only; object stores have no empty folders)."""
    loc = location(loc)
    for src in sorted(p for p in local.rglob("*") if p.is_file()):
        dst = loc / src.relative_to(local).as_posix()
        if is_remote(loc):
            upload(src, dst)
        else:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def remove(loc: str | os.PathLike[str] | UPath, recursive: bool = False) -> None:
    """Delete a file (or a tree); nothing to delete is not an error."""
    loc = location(loc)
    if not is_remote(loc):
        p = Path(loc)
        if p.is_dir() and recursive:
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return
    with contextlib.suppress(FileNotFoundError), storage_errors(loc, "delete"):
        loc.fs.rm(loc.path, recursive=recursive)


def forget_listings(loc: str | os.PathLike[str] | UPath) -> None:
    """Drop this process's cached listings under ``loc`` (a URL), so objects that other processes
    wrote meanwhile (img2dataset's workers, Spark or Ray tasks) are seen. Nothing to do locally;
    nothing cached for s3, whose listing cache is off (``S3_DEFAULTS``), but gcsfs and adlfs cache."""
    loc = location(loc)
    if not is_remote(loc):
        return
    fs, root = loc.fs, loc.path.rstrip("/")
    cache = getattr(fs, "dircache", None)
    if cache is not None:
        for key in [k for k in list(cache) if k == root or k.startswith(root + "/")]:
            cache.pop(key, None)
    fs.invalidate_cache(root)  # and its parents' listings


def list_files(loc: str | os.PathLike[str] | UPath, pattern: str = "*") -> list[UPath]:
    """Files directly under ``loc`` matching ``pattern``, sorted by name (one listing request, never
    from a cached listing: other processes may have written under ``loc`` since)."""
    loc = location(loc)
    if not is_remote(loc):
        return sorted(p for p in Path(loc).glob(pattern) if p.is_file()) if Path(loc).is_dir() else []  # type: ignore[misc]
    forget_listings(loc)
    with storage_errors(loc, "list"):
        try:
            found = loc.fs.glob(loc.path.rstrip("/") + "/" + pattern, detail=True)
        except FileNotFoundError:
            return []
    files = [name for name, info in found.items() if info.get("type") != "directory"]
    return sorted((UPath(f"{loc.protocol}://{name}") for name in files), key=str)


def ensure_dir(loc: str | os.PathLike[str] | UPath) -> UPath:
    """Create a local directory; on object storage there is nothing to create (prefixes are implicit)."""
    loc = location(loc)
    if not is_remote(loc):
        Path(loc).mkdir(parents=True, exist_ok=True)
    return loc


def check_bucket(loc: str | os.PathLike[str] | UPath, write: bool = False) -> None:
    """Fail early and clearly when ``loc``'s endpoint, bucket or credentials are wrong (or, with
    ``write``, when it is read-only): one small listing (and a probe object), before any work."""
    loc = location(loc)
    if not is_remote(loc):
        return
    with storage_errors(loc, "reach"):
        try:
            loc.fs.ls(loc.path.split("/", 1)[0], detail=False)
        except FileNotFoundError:
            raise StorageError(f"{url(loc)}: bucket {loc.path.split('/', 1)[0]!r} does not exist") from None
    if write:
        probe = loc / "_write_probe"
        with storage_errors(loc, "write to"):
            try:
                probe.fs.pipe_file(probe.path, b"")
                probe.fs.rm_file(probe.path)
            except PermissionError as exc:
                raise StorageError(f"cannot write to {url(loc)}: {describe(exc)}") from None


# --- a command for readers that open shards by command (webdataset's ``pipe:`` URLs) -----------------


def pipe_url(loc: str | os.PathLike[str] | UPath) -> str:
    """A webdataset ``pipe:`` URL streaming ``loc`` (it may be a brace pattern, expanded by webdataset
    before the shell sees it) through :func:`main`; the credentials come from the environment."""
    import shlex
    import sys

    return f"pipe:{shlex.quote(sys.executable)} -m curation.core.storage cat {shlex.quote(url(loc))}"


def main(argv: list[str] | None = None) -> int:
    """``python -m curation.core.storage cat URL...``: write the objects to stdout, one after another.

    What webdataset's ``pipe:`` URLs (and open_clip_train's ``--train-data``) run to read shards on
    object storage. A reader that stops early (webdataset closes a shard's pipe after its last
    sample) ends it with status 141, as ``cat`` killed by SIGPIPE, which webdataset ignores.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "cat":
        print("usage: python -m curation.core.storage cat URL [URL...]", file=sys.stderr)
        return 2
    configure_from_env()
    out = sys.stdout.buffer
    for text in args[1:]:
        loc = location(text)
        try:
            with storage_errors(loc, "read"), loc.open("rb") as f:
                shutil.copyfileobj(f, out, 4 << 20)
            out.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # nothing left to flush at exit
            return 141
        except OSError as exc:
            print(redact(f"cannot read {url(loc)}: {describe(exc)}"), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
