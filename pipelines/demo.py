"""``curate demo``: the embedded default end to end (no internet, no GPU): ``conf/pipelines/demo.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import EngineOpt, SetOpt, console
from pipelines.run import execute_job


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where everything is written.")] = Path("demo_out"),
    pairs: Annotated[int, typer.Option("--pairs", min=500, help="Size of the synthetic crawl.")] = 10_000,
    engine: EngineOpt = "local",
    overrides: SetOpt = None,
) -> None:
    """Generate, serve, download, score, filter, select, train, evaluate and report: the whole pipeline.

    The same job as `curate run conf/pipelines/demo.yaml --set workdir=OUT`. Rerunning into the same
    OUT skips finished steps and finished ablation cells.
    """
    from workflows.ablation_results import read_headlines
    from workflows.demo import DEMO_JOB
    from workflows.jobfile import load_job

    job = load_job(DEMO_JOB, [f"workdir={out.resolve()}", f"vars.pairs={pairs}", *(overrides or [])])
    runs = execute_job(job, engine)
    total = sum(r.seconds for r in runs)
    console.print(f"[bold]total[/bold] (steps run now): {total:.0f} s")
    for line in read_headlines(out / "ablation"):
        console.print(line)
    console.print(f"report: {out / 'ablation' / 'report.html'}\ncards:  {out / 'cards'}/*/card.html")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
