"""``curate download``: fetch a crawl's images with img2dataset into a pool, and account for every row."""

from __future__ import annotations

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
        str | None,
        typer.Argument(
            help="Crawl: a parquet file or a folder of them (url, caption or text, optional uid, source)."
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Pool folder or URL to write (img2dataset layout).")
    ] = None,
    append: Annotated[
        bool,
        typer.Option("--append", help="Add the crawl's rows with uids not in the --out pool, as new shards."),
    ] = False,
    retry_failed: Annotated[
        str | None,
        typer.Option(
            "--retry-failed",
            help="Pool whose retriable failures (timeout, connection, 5xx, 429) are fetched again; no URLS.",
        ),
    ] = None,
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
    """Download a crawl into a pool; rerun the same command to resume (finished shards are skipped).

    `--append` adds a new crawl slice to an existing pool; `--retry-failed POOL` fetches its
    retriable failures again. Both write new shards and keep one final verdict per crawl row.
    """
    from curation.download import CrawlError, PlanMismatch

    if retry_failed is not None:
        if urls is not None or append:
            raise typer.BadParameter("--retry-failed POOL takes no URLS and no --append")
        out = retry_failed
    elif urls is None or out is None:
        raise typer.BadParameter("give URLS and --out POOL (or --retry-failed POOL)")
    inputs = {"crawl": urls, "out": out, "append": append, "retry_failed": retry_failed is not None}
    run_stage(
        "download", inputs, config=config, overrides=overrides,
        engine=engine, workers=workers, master=master, address=address, errors=(CrawlError, PlanMismatch),
    )  # fmt: skip
    console.print(f"pool: {out}\nfunnel: {out}/_stats/download-*.json", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("download")(download_command)
