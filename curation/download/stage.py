"""The ``download`` stage: a crawl table into an img2dataset pool, every row kept or dropped with a reason."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field

from curation.core import storage
from curation.core.config import ConfigError, ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.download.config import DownloadConfig
from curation.engines import Engine


class DownloadInputs(ConfigModel):
    crawl: storage.Location | None = Field(
        None, description="Crawl parquet file or folder (url, caption, uid, source); a path or a URL."
    )
    out: storage.Location = Field(storage.location("pool"), description="The pool: a folder or a URL.")
    append: bool = Field(False, description="Add the crawl's rows with uids not in `out` as new shards.")
    retry_failed: bool = Field(False, description="Fetch the retriable failures of the pool `out` again.")
    serve: Path | None = Field(
        None, description="A synthetic crawl folder: serve its web on 127.0.0.1 and fetch from there."
    )


@contextmanager
def served_crawl(synth: Path, crawl: Path, local_crawl: Path) -> Iterator[Path]:
    """Serve ``synth``'s web on a free 127.0.0.1 port; yields ``crawl`` rewritten to point at it."""
    import pyarrow.parquet as pq

    from curation.synth import rebase_urls, serve

    with serve(synth, "127.0.0.1", 0) as server:
        pq.write_table(rebase_urls(storage.read_parquet(crawl), server.base_url), local_crawl)
        yield local_crawl


@contextmanager
def local_crawl_path(out: Path) -> Iterator[Path]:
    """Where the served crawl's rewritten copy goes: next to a local pool, in a temp folder for a URL."""
    name = f"{out.name}.crawl_local.parquet"
    if not storage.is_remote(out):
        local = Path(out).parent / name
        local.parent.mkdir(parents=True, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="curation-crawl-") as tmp:
        yield Path(tmp) / name


def run_download(inputs: DownloadInputs, cfg: DownloadConfig, engine: Engine) -> StageResult:
    from curation.download import retry_failed
    from curation.download.run import download_crawl

    if inputs.retry_failed:
        return StageResult.from_reports(retry_failed(inputs.out, cfg, engine))
    if inputs.crawl is None:
        raise ConfigError("download: `crawl` is required (unless retry_failed)")
    if inputs.serve is None:
        report = download_crawl(inputs.crawl, inputs.out, cfg, engine, append=inputs.append)
    else:
        with local_crawl_path(inputs.out) as local, served_crawl(inputs.serve, inputs.crawl, local) as crawl:
            report = download_crawl(crawl, inputs.out, cfg, engine, append=inputs.append)
    return StageResult.from_reports(report)


STAGE = StageDef("download", DownloadInputs, run_download, DownloadConfig, "download/default.yaml")
