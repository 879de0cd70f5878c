"""``curate reshard``: write a subset's samples into webdataset training shards (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.core.config import load_config
from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    WorkersOpt,
    console,
    finish,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def reshard_command(
    pool: Annotated[Path, typer.Argument(help="Pool directory (img2dataset layout, with tars).")],
    subset: Annotated[Path, typer.Argument(help="Subset .npy (DataComp format) from `curate select`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory for NNNNN.tar, sizes.json, stats.json.")
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
    from curation.engines import open_engine
    from curation.reshard.run import ReshardConfig, run_reshard

    cfg = load_config(ReshardConfig, config, overrides or [])
    with open_engine(engine, workers, master, address) as eng:
        result = run_reshard(pool, subset, out, cfg, labels, engine=eng, overwrite=overwrite)
    for report in result.reports:
        finish(report)
    stats = result.plan["stats"]
    n = result.plan["shards"]
    console.print(
        f"wrote {stats['kept']} samples of {stats['seen']} subset entries into {n} shards in {out} "
        f"(dropped: {stats['dropped'] or 'none'}); train with --train-data '{out}/{{00000..{n - 1:05d}}}.tar'"
    )


def register(app: typer.Typer) -> None:
    app.command("reshard")(reshard_command)
