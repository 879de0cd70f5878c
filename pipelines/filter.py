"""``curate filter``: run the configured quality filters over a pool, writing verdict columns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curation.core.config import CONF_DIR, ConfigModel, load_config
from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    WorkersOpt,
    finish,
    print_funnel,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


class FilterJobConfig(ConfigModel):
    name: str = "filters"
    filters: list[dict[str, Any]]


def filter_command(
    pool: Annotated[Path, typer.Argument(help="Pool directory (img2dataset layout or DataComp metadata).")],
    config: ConfigOpt = CONF_DIR / "filters" / "basic.yaml",
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
    master: MasterOpt = None,
    address: AddressOpt = None,
) -> None:
    """Compute every filter's verdict for every sample; selection uses them later."""
    from curation.engines import open_engine, run_job
    from curation.filtering.job import FilterJob

    cfg = load_config(FilterJobConfig, config, overrides or [])
    with open_engine(engine, workers, master, address) as eng:
        report = run_job(FilterJob(pool, cfg.filters, cfg.name), eng)
    print_funnel(report)
    finish(report)


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
