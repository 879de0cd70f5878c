"""``curate ablate``: a quality-threshold ablation grid -> results table and one HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.core.config import CONF_DIR, load_config
from pipelines.options import SetOpt, console

DEFAULT_CONFIG = CONF_DIR / "ablation" / "default.yaml"


def ablate_command(
    config: Annotated[
        Path,
        typer.Argument(help="Ablation YAML (see conf/ablation/default.yaml).", exists=True, dir_okay=False),
    ] = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (cells, sets, report).")] = Path(
        "out/ablation"
    ),
    overrides: SetOpt = None,
    parallel_cells: Annotated[
        int | None, typer.Option("--parallel-cells", "-p", min=1, help="Cells trained at once.")
    ] = None,
) -> None:
    """Select top-k% and random controls, train each set in both budget modes, evaluate, report.

    Finished cells are skipped on a rerun; failed cells are listed and retried by the next run.
    """
    from workflows.ablation import AblationConfig, run_ablation
    from workflows.ablation_results import read_headlines

    sets = [f"parallel_cells={parallel_cells}"] if parallel_cells else []
    cfg = load_config(AblationConfig, config, [*(overrides or []), *sets])
    result = run_ablation(cfg, out)
    for line in read_headlines(out):
        console.print(line)
    console.print(f"results: {out / 'results.csv'}\nreport:  {out / 'report.html'}")
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} of {len(result.cells)} cell(s) failed[/red]: "
            + "; ".join(f"{c.id} ({c.error})" for c in result.failed[:5])
            + "\nRerun the same command: finished cells are skipped."
        )
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_command)
