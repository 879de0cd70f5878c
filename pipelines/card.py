"""``curate card``: a dataset card (README.md + self-contained HTML) for a curated set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import console, run_stage

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def card_command(
    subset: Annotated[
        str, typer.Argument(help="Subset .npy (DataComp format) with its manifest (a path or a URL).")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for README.md, card.html and figures.")],
    pool: Annotated[Path | None, typer.Option(help="Pool directory; default: the manifest's pool.")] = None,
    results: Annotated[Path | None, typer.Option(help="Evaluation results (JSON lines) to include.")] = None,
    name: Annotated[
        str | None, typer.Option(help="The set's name in the card (default: the subset manifest's name).")
    ] = None,
) -> None:
    """Write a dataset card from recorded stats and attribute tables (nothing is recomputed)."""
    given = [results] if results else []
    inputs = {"subset": subset, "out": out, "pool": pool, "results": given, "name": name}
    result = run_stage("card", inputs)
    console.print(f"card: {result.summary['readme']}\n      {result.summary['html']}")


def register(app: typer.Typer) -> None:
    app.command("card")(card_command)
