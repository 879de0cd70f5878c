"""``curate filter``: run the configured quality filters over a pool, writing verdict columns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curation.cliutil import ConfigOpt, EngineOpt, SetOpt, WorkersOpt, finish, print_funnel
from curation.config import ConfigModel, load_config
from curation.engines import run_job
from curation.filtering import FilterJob


class FilterJobConfig(ConfigModel):
    name: str = "filters"
    filters: list[dict[str, Any]]


def filter_command(
    pool: Annotated[Path, typer.Argument(help="Pool directory (img2dataset layout or DataComp metadata).")],
    config: ConfigOpt = Path("conf/filters/basic.yaml"),
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
) -> None:
    """Compute every filter's verdict for every sample; selection uses them later."""
    cfg = load_config(FilterJobConfig, config, overrides or [])
    report = run_job(FilterJob(pool, cfg.filters, cfg.name), engine, workers=workers)
    print_funnel(report)
    finish(report)


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
