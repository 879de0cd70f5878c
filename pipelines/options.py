"""Options shared by ``curate`` subcommands, so every stage takes config the same way."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

if TYPE_CHECKING:  # type names only: importing the engines at runtime would slow every `curate` start
    from curation.core.stagedef import StageResult
    from curation.core.stats import Funnel
    from curation.engines import JobReport

console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (see conf/).", exists=True, dir_okay=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: --set section.key=value (repeatable)."),
]
EngineOpt = Annotated[str, typer.Option("--engine", "-e", help="Where shards run: local, spark or ray.")]
MasterOpt = Annotated[
    str | None,
    typer.Option(help="Spark: attach to this master (spark://host:7077, yarn); default: local[WORKERS]."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(help="Ray: attach to this cluster (auto, ray://host:10001); default: a local Ray."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=1, help="Parallel shard workers.")]


def print_funnel(report: JobReport) -> None:
    """A readable funnel table of a job: per stage and source, seen, kept and each drop reason."""
    print_funnel_table(f"{report.job} funnel", report.funnel())


def print_funnel_table(title: str, funnel: Funnel) -> None:
    table = Table(title=title)
    rows = funnel.rows()
    reasons = sorted({k for r in rows for k in r if k.startswith("dropped_")})
    for col in ["stage", "source", "seen", "kept", *reasons]:
        table.add_column(
            col.removeprefix("dropped_"), justify="left" if col in ("stage", "source") else "right"
        )
    for r in rows:
        table.add_row(*(str(r.get(c, 0)) for c in ["stage", "source", "seen", "kept", *reasons]))
    print_table(table)


def print_table(table: Table) -> None:
    """Laid out for the terminal; in a log file or a pipe at the table's natural width.

    Rich assumes 80 columns when its output is not a terminal, which cuts a wide funnel's reason
    columns to ``…``; a file has no width to respect.
    """
    if console.is_terminal:
        console.print(table)
        return
    wide = Console(file=console.file, width=100_000, color_system=None)
    width = Measurement.get(wide, wide.options, table).maximum
    Console(file=console.file, width=max(width, 20), color_system=None).print(table)


def rerun_command() -> str:
    """This command line as the user would type it again (without any secret it was given)."""
    from curation.core.storage import redact

    return redact(shlex.join(["curate", *sys.argv[1:]]))


def finish(report: JobReport) -> None:
    """Exit non-zero when shards failed, telling the user that a rerun finishes only those."""
    if report.failed:
        console.print(
            f"[red]{len(report.failed)} shard(s) failed[/red]: "
            + ", ".join(f"{o.shard} ({o.error})" for o in report.failed[:5])
            + f"\nRerun the same command (finished shards are skipped): {rerun_command()}"
        )
        raise typer.Exit(1)


def run_stage(
    name: str,
    inputs: dict[str, Any],
    *,
    config: Path | None = None,
    overrides: list[str] | None = None,
    settings: dict[str, Any] | None = None,
    engine: str = "local",
    workers: int = 1,
    master: str | None = None,
    address: str | None = None,
    errors: tuple[type[Exception], ...] = (),
) -> StageResult:
    """Run the registered stage ``name`` as a command: the same ``run`` a job file step calls.

    Config: the file (or the stage's default), ``settings`` (the command's own flags) merged over
    it, then ``--set`` overrides. ``errors`` are the stage's bad-input exceptions: one red line and
    exit status 2 instead of a traceback. Funnels are printed; failed shards exit 1.
    """
    from curation.core.stagedef import STAGES
    from curation.core.storage import StorageError
    from curation.engines import open_engine

    stage = STAGES.get(name)
    cfg = stage.load_config(config, settings, overrides or [])
    args = stage.make_inputs(inputs, "command line")
    errors = (*errors, StorageError)
    try:
        with open_engine(engine, workers, master, address) as eng:
            result = stage.run(args, cfg, eng)
    except errors as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from exc
    for report in result.reports:
        print_funnel(report)
    for report in result.reports:
        finish(report)
    return result
