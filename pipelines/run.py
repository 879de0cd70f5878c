"""``curate run JOB.yaml``: a whole curation job (download ... reshard, card) declared in one file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.table import Table

from curation.core.config import ConfigError
from pipelines.options import AddressOpt, MasterOpt, SetOpt, console, rerun_command

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.
if TYPE_CHECKING:
    from workflows.jobfile import JobSpec, StepRun


def run_command(
    job_file: Annotated[
        Path, typer.Argument(help="Job YAML (see conf/pipelines/).", exists=True, dir_okay=False)
    ],
    engine: Annotated[
        str | None, typer.Option("--engine", "-e", help="local, spark or ray (default: the job file's).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Shard workers (local cluster size).")
    ] = None,
    master: MasterOpt = None,
    address: AddressOpt = None,
    overrides: SetOpt = None,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", help="Leave out this step (by name; repeatable).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list the steps with their settings; run nothing.")
    ] = False,
) -> None:
    """Run every step of JOB in order on one engine; a rerun skips finished steps and shards."""
    from workflows.jobfile import load_job

    try:
        job = load_job(job_file, overrides or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from exc
    if dry_run:
        print_plan(job)
        return
    execute_job(job, engine, workers, master, address, skip)


def execute_job(
    job: JobSpec,
    engine: str | None = None,
    workers: int | None = None,
    master: str | None = None,
    address: str | None = None,
    skip: list[str] | None = None,
) -> list[StepRun]:
    """Run ``job`` on the engine asked for (default: the job file's); the one path of run and demo."""
    from curation.core.pool import PoolError
    from curation.core.stagedef import StageFailed
    from curation.core.storage import StorageError
    from curation.engines import open_engine
    from workflows.jobfile import run_job_file

    e = job.engine
    name = engine or e.name
    same = name == e.name  # the file's attach settings belong to its own engine only
    try:
        with open_engine(
            name,
            workers or e.workers,
            master or (e.master if same else None),
            address or (e.address if same else None),
        ) as eng:
            runs = run_job_file(job, eng, skip or [])
    except (ConfigError, PoolError, StorageError) as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from exc
    except StageFailed as exc:
        console.print(
            f"[red]step failed:[/red] {exc}\n"
            f"Rerun the same command (finished work is skipped): {rerun_command()}"
        )
        raise typer.Exit(1) from exc
    table = Table(title=f"{job.name} ({name})")
    for col in ("step", "status", "seconds"):
        table.add_column(col)
    for r in runs:
        table.add_row(r.label, r.status, f"{r.seconds:.1f}" if r.status == "done" else "")
    console.print(table)
    return runs


def print_plan(job: JobSpec) -> None:
    from workflows.jobfile import pending_steps

    for step, done in pending_steps(job):
        state = "done (skipped on a run)" if done else "to run"
        console.print(f"[bold]{step.spec.label}[/bold] ({step.spec.stage}): {state}", highlight=False)
        shown = {
            "inputs": step.inputs.model_dump(mode="json"),
            "config file": str(step.config_file) if step.config_file else None,
            "config": _dump(step.config),
        }
        console.print(yaml.safe_dump(shown, sort_keys=False), highlight=False)


def _dump(config: object) -> object:
    dump = getattr(config, "model_dump", None)
    return dump(mode="json") if dump else config


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
