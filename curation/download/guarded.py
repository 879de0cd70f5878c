"""img2dataset's ``Downloader`` with the guards of this package put around the pieces that need them.

:class:`GuardedDownloader` is what ``img2dataset.download`` builds instead of its own ``Downloader``
(see :func:`curation.download.fetch.guarded_img2dataset`). It is the same class, with:

- the resizer wrapped by :class:`~curation.download.decodeguard.GuardedResizer` (header check
  before decoding: ``image_too_large``),
- img2dataset's per-url fetch replaced, in the process that runs the shard, by
  :func:`~curation.download.redirects.fetch_image` (every redirect hop through the url policy:
  ``blocked_redirect``; the body capped: ``body_too_large``),
- the sample writer adding ``final_url`` (where the image came from after redirects) to each
  sample's metadata: the pool parquet and the tar's ``KEY.json``.

It is picklable and runs wherever img2dataset's distributor sends it (local processes, Spark
executors, Ray workers). One shard runs at a time in a process (every distributor works so), which
is what lets the final urls live on the downloader between fetch and write.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import img2dataset.downloader as i2d_downloader
import pyarrow as pa
from img2dataset.downloader import Downloader

from curation.core import storage
from curation.download.decodeguard import GuardedResizer, ImageLimits
from curation.download.redirects import FetchGuard, fetch_image

FINAL_URL = "final_url"
_storage_configured = False  # per process: the storage options the driver handed over (see fetch.py)


@dataclass(frozen=True)
class GuardSettings:
    allow_hosts: tuple[str, ...]
    limits: ImageLimits
    max_body_bytes: int


class FinalUrlWriter:
    """An img2dataset sample writer that adds a ``final_url`` column and metadata field."""

    def __init__(self, inner: Any, guard: FetchGuard, oom_sample: int, *args: Any) -> None:
        shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format = args
        schema = schema.append(pa.field(FINAL_URL, pa.string()))
        self.inner = inner(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)
        self.guard = guard
        self.modulo = 10**oom_sample

    def write(self, img_str: bytes | None, key: str, caption: str | None, meta: dict[str, Any]) -> None:
        meta[FINAL_URL] = self.guard.final_urls.get(int(key) % self.modulo)
        self.inner.write(img_str, key, caption, meta)

    def close(self) -> None:
        self.inner.close()


class GuardedDownloader(Downloader):
    """img2dataset's downloader with the header check, redirect policy, body cap and final urls."""

    def __init__(self, *, guard_settings: GuardSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fetch_guard = FetchGuard(guard_settings.allow_hosts, guard_settings.max_body_bytes)
        self.resizer = GuardedResizer(self.resizer, guard_settings.limits)
        oom_sample = math.ceil(math.log10(self.number_sample_per_shard))  # as img2dataset's compute_key
        self.sample_writer_class = functools.partial(
            FinalUrlWriter, self.sample_writer_class, self.fetch_guard, oom_sample
        )

    def __call__(self, row: Any) -> tuple[bool, Any]:
        _configure_storage()
        # img2dataset's download_image_with_retry looks download_image up in its module at call time;
        # this process only runs img2dataset shards, so replacing it here affects nothing else.
        i2d_downloader.download_image = functools.partial(fetch_image, guard=self.fetch_guard)
        self.fetch_guard.final_urls.clear()
        try:
            return super().__call__(row)
        finally:
            self.fetch_guard.final_urls.clear()


def _configure_storage() -> None:
    """In a worker process: the storage options of the driver, once (its shard objects may be URLs)."""
    global _storage_configured
    if not _storage_configured:
        storage.configure_from_env()
        _storage_configured = True


def guarded_downloader_factory(settings: GuardSettings) -> Any:
    """What ``img2dataset.main`` should call instead of ``Downloader(...)``."""
    return functools.partial(GuardedDownloader, guard_settings=settings)
