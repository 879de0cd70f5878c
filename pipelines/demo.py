"""``curate demo``: the embedded default end to end (no internet, no GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import console


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where everything is written.")] = Path("demo_out"),
    pairs: Annotated[int, typer.Option("--pairs", min=500, help="Size of the synthetic crawl.")] = 10_000,
) -> None:
    """Generate, serve, download, score, filter, select, train, evaluate and report: the whole pipeline.

    Rerunning into the same OUT skips finished steps and finished ablation cells.
    """
    from workflows.ablation_results import read_headlines
    from workflows.demo import DemoStepFailed, run_demo, write_cards

    try:
        timings = run_demo(out, pairs)
    except DemoStepFailed as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    timings.update(write_cards(out))
    console.print("[bold]stage times (s)[/bold]: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    console.print(f"[bold]total[/bold] (latest run of each step): {sum(timings.values()):.0f} s")
    for line in read_headlines(out / "ablation"):
        console.print(line)
    console.print(f"report: {out / 'ablation' / 'report.html'}\ncards:  {out / 'cards'}/*/card.html")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
