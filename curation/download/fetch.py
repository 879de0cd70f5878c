"""Running img2dataset: the one place it is called, offline, with readable output and a progress view.

img2dataset's worker processes print a line per shard, tqdm bars and the occasional traceback; with
``downloader.output: file`` all of that goes to ``POOL/_download/img2dataset.log`` (file
descriptors 1 and 2 are redirected, so spawned workers inherit the redirect) and the terminal shows
one progress bar, or one line per finished shard when it is not a terminal. ``distributor`` is a
pass-through switch: adding img2dataset's pyspark distributor changes nothing here but the value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from curation.core import storage
from curation.core.config import ConfigError
from curation.download.config import DownloadConfig
from curation.download.watchdog import shard_failures
from curation.engines.cluster import PROJECT_ENV

log = logging.getLogger(__name__)

# img2dataset imports albumentations (which asks PyPI for a newer version unless told not to) and
# wandb (off unless enabled); spawned workers inherit the environment.
OFFLINE_ENV = PROJECT_ENV  # the same switches every cluster worker gets
OOM_SHARD_COUNT = 5  # NNNNN shard names


def img2dataset_arguments(input_folder: Path, pool: Path, cfg: DownloadConfig) -> dict[str, Any]:
    """Keyword arguments of ``img2dataset.download`` for this config."""
    d = cfg.downloader
    return {
        "url_list": str(input_folder),
        "output_folder": str(pool),
        "input_format": "parquet",
        "output_format": "webdataset",
        "url_col": "url",
        "caption_col": "caption",
        "save_additional_columns": [
            "uid",
            "source",
            *(c for c in cfg.columns.carry if c != cfg.columns.bbox),
        ],
        "bbox_col": cfg.columns.bbox,
        "number_sample_per_shard": cfg.number_sample_per_shard,
        "oom_shard_count": OOM_SHARD_COUNT,
        "distributor": d.distributor,
        "processes_count": d.processes_count,
        "thread_count": d.thread_count,
        "timeout": d.timeout,
        "retries": d.retries,
        "max_shard_retry": d.max_shard_retry,
        "user_agent_token": d.agent_token(),
        "disallowed_header_directives": list(d.disallowed_header_directives),
        "compute_hash": "sha256",
        "incremental_mode": "incremental",
        "enable_wandb": False,
        **cfg.image.model_dump(),
    }


@dataclass
class ShardCounts:
    """What img2dataset's ``NNNNN_stats.json`` files say about newly finished shards."""

    shards: int = 0
    urls: int = 0
    successes: int = 0
    start: float = float("inf")
    end: float = float("-inf")

    def add(self, stats: dict[str, Any]) -> None:
        self.shards += 1
        self.urls += int(stats["count"])
        self.successes += int(stats["successes"])
        self.start = min(self.start, float(stats["start_time"]))
        self.end = max(self.end, float(stats["end_time"]))


def offline_env() -> None:
    """Set before img2dataset (and albumentations) is first imported, in this process or a child."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def img2dataset_download() -> Callable[..., None]:
    """``img2dataset.download``, imported offline (heavy: torch via webdataset; only when needed)."""
    offline_env()
    from img2dataset import download

    return download


class Img2datasetConfigError(ConfigError):
    """img2dataset refused its arguments before downloading anything."""


def guard_settings(cfg: DownloadConfig) -> Any:
    """The guards' settings (imports img2dataset: call only when downloading)."""
    offline_env()
    from curation.download.decodeguard import ImageLimits
    from curation.download.guarded import GuardSettings

    limits = cfg.limits
    return GuardSettings(
        tuple(cfg.url_policy.allow_hosts),
        ImageLimits(limits.max_image_pixels, limits.max_decoded_bytes),
        limits.max_body_bytes,
    )


class QuietLogger:
    """Stands in for img2dataset's ``LoggerProcess`` when wandb is off.

    That process only prints speed lines (which :func:`run_img2dataset` replaces with its own
    per-shard view) but is a spawned interpreter importing all of img2dataset, torch included:
    seconds of CPU competing with the download workers' start-up, and waited for at the end."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.done_shards: set[int] = set()

    def start(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...


def logger_process(output_folder: str, enable_wandb: bool, *args: Any) -> Any:
    """img2dataset's logger process where it reports to wandb, else :class:`QuietLogger`."""
    if enable_wandb:
        from img2dataset.logger import LoggerProcess

        return LoggerProcess(output_folder, enable_wandb, *args)
    return QuietLogger()


@contextlib.contextmanager
def guarded_img2dataset(settings: Any) -> Iterator[None]:
    """Make ``img2dataset.download`` build the guarded downloader and use the watchdog distributor.

    Both are module globals of ``img2dataset.main`` that ``download`` looks up when it runs; they are
    put back afterwards. The watchdog replaces only the local (multiprocessing) distributor; Spark
    and Ray notice lost tasks themselves. Its logger process gives way to :func:`logger_process`.
    """
    import importlib

    from curation.download.guarded import guarded_downloader_factory
    from curation.download.watchdog import watchdog_distributor

    i2d_main = importlib.import_module("img2dataset.main")  # the package's `main` attribute is a function
    saved = i2d_main.Downloader, i2d_main.multiprocessing_distributor, i2d_main.LoggerProcess
    i2d_main.Downloader = guarded_downloader_factory(settings)
    i2d_main.multiprocessing_distributor = watchdog_distributor
    i2d_main.LoggerProcess = logger_process
    try:
        yield
    finally:
        i2d_main.Downloader, i2d_main.multiprocessing_distributor, i2d_main.LoggerProcess = saved


def run_img2dataset(
    arguments: dict[str, Any], pending: dict[str, int], log_file: Path | None, settings: Any = None
) -> ShardCounts:
    """Download the ``pending`` shards (id -> url count); img2dataset itself skips finished ones.

    ``settings`` (:func:`guard_settings`) puts the header check, redirect policy, body cap and the
    worker watchdog around img2dataset.

    The output folder may be a URL: img2dataset's workers write its objects through fsspec
    (``log_file`` too may be a URL: img2dataset's output is then appended to it when it returns).
    """
    pool = storage.location(arguments["output_folder"])
    if pool.protocol == "memory":
        raise Img2datasetConfigError(
            f"{pool}: memory:// lives inside one process, and img2dataset writes from worker processes; "
            "download into a local folder or onto object storage (s3://, gs://, ...)"
        )
    download = img2dataset_download()
    counts = ShardCounts()
    previous_sigint = signal.getsignal(signal.SIGINT)  # img2dataset installs one that exits 0
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_storage_env())
            if log_file is not None:
                terminal = stack.enter_context(output_to_file(stack.enter_context(local_log(log_file))))
                on_shard = stack.enter_context(_terminal_view(terminal, pending))
            else:
                on_shard = _log_line(len(pending))
            stack.enter_context(_watch_shards(pool, set(pending), counts, on_shard))
            if settings is not None:
                stack.enter_context(guarded_img2dataset(settings))
            try:
                download(**arguments)
            except ValueError as exc:  # its argument checks, raised before any shard starts
                raise Img2datasetConfigError(f"img2dataset refused the download settings: {exc}") from exc
    except SystemExit as exc:  # img2dataset's Ctrl-C handler exits with status 0: not a success
        raise KeyboardInterrupt("download interrupted; rerun the same command to resume") from exc
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    _log_throughput(counts, time.perf_counter() - started, log_file)
    storage.forget_listings(pool)  # its workers wrote from other processes
    for shard, reason in shard_failures(pool).items():
        if shard in pending:
            log.error("shard %s was not downloaded: %s", shard, reason)
    return counts


@contextlib.contextmanager
def _storage_env() -> Iterator[None]:
    """Hand this process's storage options to the processes img2dataset spawns (they read them in
    :class:`~curation.download.guarded.GuardedDownloader`); Spark and Ray workers get them from the
    engine. Credentials stay in the standard places (environment, config files)."""
    added = {k: v for k, v in storage.worker_env().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def local_log(log_file: Path) -> Iterator[Path]:
    """``log_file`` itself where it is local; for a URL a local file whose text (secrets redacted) is
    appended to the object when the block ends (object storage has no append: one read, one PUT)."""
    log_file = storage.location(log_file)
    if not storage.is_remote(log_file):
        yield Path(log_file)
        return
    with tempfile.TemporaryDirectory(prefix="curation-log-") as tmp:
        local = Path(tmp) / log_file.name
        try:
            yield local
        finally:
            if local.exists():
                before = storage.read_bytes(log_file) if log_file.exists() else b""
                text = storage.redact(local.read_text(encoding="utf-8", errors="replace"))
                storage.write_bytes(log_file, before + text.encode("utf-8"))


@contextlib.contextmanager
def output_to_file(path: Path) -> Iterator[TextIO]:
    """Send file descriptors 1 and 2 (and so every spawned worker's output) to ``path``.

    Yields a stream on the original stderr for what the user should still see.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        with open(path, "a", buffering=1) as log_stream:
            os.dup2(log_stream.fileno(), 1)
            os.dup2(log_stream.fileno(), 2)
            try:  # Python-level streams too, in case they are not fds 1 and 2 (pytest, CliRunner)
                with contextlib.redirect_stdout(log_stream), contextlib.redirect_stderr(log_stream):
                    yield terminal
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        terminal.close()
        os.close(saved[0])
        os.close(saved[1])


ShardCallback = Callable[[str, dict[str, Any], ShardCounts], None]


@contextlib.contextmanager
def _watch_shards(
    pool: Path, pending: set[str], counts: ShardCounts, on_shard: ShardCallback
) -> Iterator[None]:
    """Poll for img2dataset's per-shard stats files (written when a shard is complete)."""
    stop = threading.Event()
    remote = storage.is_remote(pool)

    def ready(remaining: set[str]) -> list[str]:
        if not remote:
            return sorted(remaining)
        try:  # one listing per poll instead of one request per pending shard
            storage.forget_listings(pool)
            names = {p.name for p in storage.list_files(pool, "*_stats.json")}
        except OSError:
            return []
        return sorted(s for s in remaining if f"{s}_stats.json" in names)

    def poll() -> None:
        remaining = set(pending)
        while remaining:
            final = stop.wait(1.0 if remote else 0.5)  # set once img2dataset has returned: one last sweep
            for shard in ready(remaining):
                try:
                    stats = json.loads(storage.read_text(pool / f"{shard}_stats.json"))
                except (OSError, json.JSONDecodeError):  # not there yet, or being written
                    continue
                remaining.discard(shard)
                counts.add(stats)
                on_shard(shard, stats, counts)
            if final:
                return

    thread = threading.Thread(target=poll, name="shard-watcher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _terminal_view(terminal: TextIO, pending: dict[str, int]) -> Iterator[ShardCallback]:
    """A progress bar over urls when ``terminal`` is a terminal, else one line per finished shard."""
    console = Console(file=terminal)
    if not console.is_terminal:
        yield _print_line(console, len(pending))
        return
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("img2dataset", total=sum(pending.values()))
        yield lambda _shard, stats, _counts: progress.advance(task, int(stats["count"]))


def _shard_line(shard: str, stats: dict[str, Any], counts: ShardCounts, total: int) -> str:
    return (
        f"shard {shard}: {stats['successes']}/{stats['count']} images in {stats['duration']:.1f} s "
        f"({counts.shards}/{total} shards, {counts.urls} urls done)"
    )


def _print_line(console: Console, total: int) -> ShardCallback:
    return lambda shard, stats, counts: console.print(
        _shard_line(shard, stats, counts, total), highlight=False
    )


def _log_line(total: int) -> ShardCallback:
    return lambda shard, stats, counts: log.info(_shard_line(shard, stats, counts, total))


def _log_throughput(counts: ShardCounts, wall: float, log_file: Path | None) -> None:
    if not counts.shards:
        log.warning("img2dataset finished no shard%s", f"; see {log_file}" if log_file else "")
        return
    busy = max(counts.end - counts.start, 1e-9)
    log.info(
        "img2dataset: %d urls in %.1f s (%.0f urls/s while downloading, %.0f urls/s with startup), "
        "%d images%s",
        counts.urls, busy, counts.urls / busy, counts.urls / max(wall, 1e-9), counts.successes,
        f"; its output is in {log_file}" if log_file else "",
    )  # fmt: skip
