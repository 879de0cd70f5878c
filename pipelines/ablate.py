"""``curate ablate``: a quality-threshold ablation grid -> results table and one HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import SetOpt, console


def ablate_command(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Ablation YAML (default: conf/ablation/default.yaml).", exists=True, dir_okay=False
        ),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output directory or URL (cells, sets, report).")
    ] = "out/ablation",
    overrides: SetOpt = None,
    parallel_cells: Annotated[
        int | None, typer.Option("--parallel-cells", "-p", min=1, help="Cells trained at once.")
    ] = None,
) -> None:
    """Select top-k% and random controls, train each set in both budget modes, evaluate, report.

    Finished cells are skipped on a rerun; failed cells are listed and retried by the next run.
    """
    from curation.core.stagedef import STAGES, StageFailed
    from workflows.ablation_results import read_headlines

    stage = STAGES.get("ablate")
    sets = [f"parallel_cells={parallel_cells}"] if parallel_cells else []
    cfg = stage.load_config(config, None, [*(overrides or []), *sets])
    failed = None
    try:
        stage.run(stage.make_inputs({"out": out}), cfg, None)
    except StageFailed as exc:
        failed = exc
    for line in read_headlines(out):
        console.print(line)
    console.print(f"results: {out / 'results.csv'}\nreport:  {out / 'report.html'}")
    if failed:
        console.print(f"[red]{failed}[/red]\nRerun the same command: finished cells are skipped.")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)
