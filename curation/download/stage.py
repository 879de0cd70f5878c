"""The ``download`` stage: a crawl table into an img2dataset pool, every row kept or dropped with a reason."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field

from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.download.config import DownloadConfig
from curation.engines import Engine


class DownloadInputs(ConfigModel):
    crawl: Path = Field(description="Crawl parquet file or folder (url, caption/text, uid, source).")
    out: Path = Path("pool")
    serve: Path | None = Field(
        None, description="A synthetic crawl folder: serve its web on 127.0.0.1 and fetch from there."
    )


@contextmanager
def served_crawl(synth: Path, crawl: Path, local_crawl: Path) -> Iterator[Path]:
    """Serve ``synth``'s web on a free 127.0.0.1 port; yields ``crawl`` rewritten to point at it."""
    import pyarrow.parquet as pq

    from curation.synth import rebase_urls, serve

    with serve(synth, "127.0.0.1", 0) as server:
        pq.write_table(rebase_urls(pq.read_table(crawl), server.base_url), local_crawl)
        yield local_crawl


def run_download(inputs: DownloadInputs, cfg: DownloadConfig, engine: Engine) -> StageResult:
    from curation.download.run import download_crawl

    if inputs.serve is None:
        report = download_crawl(inputs.crawl, inputs.out, cfg, engine)
    else:
        local = inputs.out.parent / f"{inputs.out.name}.crawl_local.parquet"
        local.parent.mkdir(parents=True, exist_ok=True)
        with served_crawl(inputs.serve, inputs.crawl, local) as crawl:
            report = download_crawl(crawl, inputs.out, cfg, engine)
    return StageResult.from_reports(report)


STAGE = StageDef("download", DownloadInputs, run_download, DownloadConfig, "download/default.yaml")
