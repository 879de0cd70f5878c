"""``curate evaluate`` (one model on a suite) and ``curate robustness`` (ER and its plot from results)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperCommand

from pipelines.options import ConfigOpt, SetOpt

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Bad suites, model references and tables end the command with their message, not a traceback."""
    from trainer.errors import EvalInputError

    try:
        yield
    except EvalInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


BASELINE_FLAGS = ("--baseline", "-b")


class GreedyBaselineCommand(TyperCommand):
    """``--baseline a b c`` names three baseline files.

    Click options take one value each, so without this ``b`` and ``c`` would silently become results
    files; here every argument after ``--baseline`` up to the next option is one more baseline file.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        greedy = False
        for arg in args:
            if arg == "--" or (arg.startswith("-") and arg != "-"):
                greedy = arg in BASELINE_FLAGS or arg.startswith("--baseline=")
                out.append(arg)
            elif greedy and out[-1] not in BASELINE_FLAGS:
                out += ["--baseline", arg]  # a further file after --baseline FILE
            else:
                out.append(arg)
        return super().parse_args(ctx, out)


BaselineOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--baseline",
        "-b",
        help="Baseline accuracies: results .jsonl of baseline runs, or .csv/.json tables "
        "(model, dataset, acc1). Takes several files (--baseline a b c) up to the next option.",
        exists=True,
        dir_okay=False,
    ),
]


def evaluate(
    source: Annotated[str | None, typer.Argument(help="RUN dir (with run.json) or checkpoint file.")] = None,
    suite: Annotated[
        str,
        typer.Option(
            "--suite",
            help="Suite directory, test set directory, or a name "
            "from the config's `suites` (e.g. synthetic).",
        ),
    ] = "synthetic",
    model: Annotated[str | None, typer.Option("--model", help="open_clip model name.")] = None,
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="open_clip tag or checkpoint path.")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Name for this model in results and plots.")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Output dir or URL (default RUN/eval/SUITE).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, ...")] = None,
    linear_probe: Annotated[bool, typer.Option("--linear-probe", help="Also fit a linear probe.")] = False,
    baseline: BaselineOpt = None,
    clip_benchmark: Annotated[
        str | None,
        typer.Option(
            "--clip-benchmark",
            help="Also write the results in CLIP_benchmark's layout here (one JSON per dataset x task).",
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Zero-shot classification and retrieval of one model on a suite; ER too if --baseline is given."""
    from curation.core import storage
    from curation.core.stagedef import STAGES
    from trainer.robustness import load_accuracy_table, records_to_table
    from trainer.robustness_report import report_robustness

    flags = {"batch_size": batch_size, "workers": workers, "device": device}
    sets = [f"{k}={v}" for k, v in flags.items() if v is not None]
    sets += ["linear_probe.enabled=true"] if linear_probe else []
    stage = STAGES.get("evaluate")
    cfg = stage.load_config(config, None, [*(overrides or []), *sets])
    inputs = {"source": source, "model": model, "pretrained": pretrained, "suite": suite, "out": out}
    with _input_errors():
        baseline_table = load_accuracy_table(baseline) if baseline else None
        given = {**inputs, "label": label, "clip_benchmark": clip_benchmark}
        summary = stage.run(stage.make_inputs(given), cfg, None).summary
        out_dir = storage.location(summary["out"])
        if baseline_table is not None:
            report_robustness(
                records_to_table(summary["records"], base=out_dir),
                baseline_table,
                out_dir,
                boot=cfg.bootstrap.as_config(),
                svg=cfg.svg,
            )
    typer.echo(str(out_dir / "results.jsonl"))


def robustness(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="results.jsonl files of the models to assess (before --baseline).",
            exists=True,
            dir_okay=False,
        ),
    ],
    baseline: BaselineOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("robustness"),
    id_dataset: Annotated[
        str | None, typer.Option("--id", help="In-distribution test set (default: role in the results).")
    ] = None,
    shift: Annotated[
        list[str] | None,
        typer.Option("--shift", help="Shift test set (repeatable; default: role in the results)."),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Effective robustness of evaluated models against a baseline fit, with bootstrap CIs and a plot."""
    from trainer.eval_config import load_eval_config
    from trainer.robustness import load_accuracy_table
    from trainer.robustness_report import report_robustness

    if not baseline:
        raise typer.BadParameter("at least one --baseline table is needed to fit the baseline line")
    cfg = load_eval_config(config, overrides or [])
    with _input_errors():
        report = report_robustness(
            load_accuracy_table(results),
            load_accuracy_table(baseline),
            out,
            id_dataset,
            shift,
            cfg.bootstrap.as_config(),
            svg=cfg.svg,
        )
    typer.echo(report.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(str(out / "effective_robustness.png"))


def register(app: typer.Typer) -> None:
    app.command("evaluate", cls=GreedyBaselineCommand)(evaluate)
    app.command("robustness", cls=GreedyBaselineCommand)(robustness)
