"""``curate copydesc``: copy-detection descriptors of every pool image, for the near-duplicate filter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.core.config import CONF_DIR, load_config
from pipelines.options import ConfigOpt, EngineOpt, SetOpt, WorkersOpt, finish, print_funnel

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def copydesc_command(
    pool: Annotated[Path, typer.Argument(help="Pool directory (img2dataset layout, with tars).")],
    config: ConfigOpt = CONF_DIR / "copydesc" / "default.yaml",
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
) -> None:
    """Write POOL/attributes/<column>/ (thumbnail + colour-histogram descriptors) for near dedup."""
    from curation.engines import run_job
    from curation.filtering.copydesc import CopyDescConfig
    from curation.filtering.copydesc_job import CopyDescJob

    cfg = load_config(CopyDescConfig, config, overrides or [])
    report = run_job(CopyDescJob(pool, cfg), engine, workers=workers)
    print_funnel(report)
    finish(report)


def register(app: typer.Typer) -> None:
    app.command("copydesc")(copydesc_command)
