"""``curate download``: fetch a crawl's images with img2dataset into a pool, and account for every row."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    console,
    run_stage,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def download_command(
    urls: Annotated[
        Path,
        typer.Argument(
            help="Crawl: a parquet file or a folder of them (url, caption or text, optional uid, source)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Pool folder to write (img2dataset webdataset layout).")
    ],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-w", min=1, help="Size of a local Spark/Ray (local: downloader.processes_count)."
        ),
    ] = 1,
    master: MasterOpt = None,
    address: AddressOpt = None,
) -> None:
    """Download a crawl into a pool; rerun the same command to resume (finished shards are skipped)."""
    from curation.download import CrawlError, PlanMismatch

    run_stage(
        "download", {"crawl": urls, "out": out}, config=config, overrides=overrides,
        engine=engine, workers=workers, master=master, address=address, errors=(CrawlError, PlanMismatch),
    )
    console.print(f"pool: {out}\nfunnel: {out}/_stats/download-*.json", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("download")(download_command)
