"""``curate reshard``: write a subset's samples into webdataset training shards (resumable)."""

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
    WorkersOpt,
    console,
    run_stage,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def reshard_command(
    pool: Annotated[str, typer.Argument(help="Pool directory (img2dataset layout, with tars).")],
    subset: Annotated[str, typer.Argument(help="Subset .npy (DataComp format) from `curate select`.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output directory for NNNNN.tar, sizes.json, stats.json.")
    ],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Label table (parquet: uid, label) to write KEY.cls for supervised training."),
    ] = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
    master: MasterOpt = None,
    address: AddressOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a different reshard already in --out.")] = False,
) -> None:
    """Write the subset's samples (repeated ones as many times) into new shards; rerun to resume."""
    from curation.core.stagedef import StageFailed

    inputs = {"pool": pool, "subset": subset, "out": out, "labels": labels, "overwrite": overwrite}
    try:
        result = run_stage(
            "reshard", inputs, config=config, overrides=overrides,
            engine=engine, workers=workers, master=master, address=address,
        )  # fmt: skip
    except StageFailed as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    stats, n = result.summary["stats"], result.summary["shards"]
    console.print(
        f"wrote {stats['kept']} samples of {stats['seen']} subset entries into {n} shards in {out} "
        f"(dropped: {stats['dropped'] or 'none'}); train with --train-data '{out}/{{00000..{n - 1:05d}}}.tar'"
    )


def register(app: typer.Typer) -> None:
    app.command("reshard")(reshard_command)
