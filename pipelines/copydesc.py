"""``curate copydesc``: copy-detection descriptors of every pool image, for the near-duplicate filter."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.options import ConfigOpt, EngineOpt, SetOpt, WorkersOpt, run_stage

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def copydesc_command(
    pool: Annotated[str, typer.Argument(help="Pool directory (img2dataset layout, with tars).")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
) -> None:
    """Write POOL/attributes/<column>/ (thumbnail + colour-histogram descriptors) for near dedup."""
    run_stage("copydesc", {"pool": pool}, config=config, overrides=overrides, engine=engine, workers=workers)


def register(app: typer.Typer) -> None:
    app.command("copydesc")(copydesc_command)
