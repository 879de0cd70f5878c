"""``curate filter``: run the configured quality filters over a pool, writing verdict columns."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    WorkersOpt,
    run_stage,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def filter_command(
    pool: Annotated[str, typer.Argument(help="Pool directory (img2dataset layout or DataComp metadata).")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
    master: MasterOpt = None,
    address: AddressOpt = None,
) -> None:
    """Compute every filter's verdict for every sample; selection uses them later."""
    run_stage(
        "filter", {"pool": pool}, config=config, overrides=overrides,
        engine=engine, workers=workers, master=master, address=address,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
