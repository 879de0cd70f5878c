"""``curate train`` and ``curate reference-model``: train on curated shards with a fixed preset."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from pipelines.options import ConfigOpt, SetOpt

log = logging.getLogger(__name__)

ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="one_epoch: samples seen = subset size; equal_samples: the preset's (or --samples-seen) budget.",
    ),
]
SamplesOpt = Annotated[
    int | None, typer.Option("--samples-seen", help="Budget of equal_samples (default: the preset's).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of model init and data order.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PresetOpt = Annotated[str, typer.Option("--preset", help="tiny, small, medium or a preset YAML path.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Retrain into an OUT that holds a run.")]


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad input (shards, budget, run dir) is a one-line error and exit status 2, not a traceback."""
    from trainer.budget import BudgetError
    from trainer.runs import RunError
    from trainer.shards import ShardError
    from trainer.train import TrainError

    try:
        yield
    except (BudgetError, RunError, ShardError, TrainError) as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from exc


def train_cmd(
    shards: Annotated[str, typer.Argument(help="Training shards directory (NNNNN.tar + sizes.json).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory (resumed if unfinished).")],
    preset: PresetOpt = "tiny",
    mode: ModeOpt = "one_epoch",
    samples_seen: SamplesOpt = None,
    seed: SeedOpt = 0,
    supervised: Annotated[
        bool, typer.Option("--supervised", help="Image tower + linear head on KEY.cls (no language).")
    ] = False,
    classnames: Annotated[
        str | None,
        typer.Option("--classnames", help="Class names for --supervised (default: beside the shards)."),
    ] = None,
    device: DeviceOpt = "auto",
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs on this node (torchrun); batch is split.")] = 1,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_command: Annotated[
        bool,
        typer.Option(
            "--print-command",
            help="Prepare OUT, print the open_clip_train command (to run under srun/torchrun) and exit.",
        ),
    ] = False,
) -> None:
    """Train a CLIP (open_clip_train) or the supervised baseline on SHARDS; writes OUT/run.json."""
    from curation.core.stagedef import STAGES
    from trainer.train import make_plan, prepare_run_dir, subprocess_command

    stage = STAGES.get("train")
    inputs = stage.make_inputs(
        {
            "shards": shards, "out": out, "preset": preset, "preset_config": config,
            "preset_set": overrides or [], "mode": mode, "samples_seen": samples_seen, "seed": seed,
            "device": device, "gpus": gpus, "supervised": supervised, "classnames": classnames,
            "overwrite": overwrite,
        }
    )  # fmt: skip
    with _clear_errors():
        if print_command:
            import shlex

            plan = make_plan(inputs.request())
            prepare_run_dir(plan)
            print(shlex.join(subprocess_command(plan)))
            return
        run = stage.run(inputs, stage.load_config(), None).summary
    typer.echo(f"{run['kind']} model {run['model']}: {run['checkpoint']}")


def reference_model_cmd(
    seed_dir: Annotated[str, typer.Argument(help="Clean seed shards (e.g. out/synth/seed).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory.")],
    preset: PresetOpt = "tiny",
    samples_seen: SamplesOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the reference CLIP (a data filtering network) on a clean seed set, equal_samples budget."""
    from curation.core.stagedef import STAGES

    stage = STAGES.get("reference_model")
    inputs = {
        "shards": seed_dir, "out": out, "preset": preset, "preset_config": config,
        "preset_set": overrides or [], "samples_seen": samples_seen, "seed": seed, "device": device,
        "overwrite": overwrite,
    }  # fmt: skip
    with _clear_errors():
        run = stage.run(stage.make_inputs(inputs), stage.load_config(), None).summary
    typer.echo(
        f"reference CLIP {run['model']}: {run['checkpoint']} (score with model={run['model']}, "
        "pretrained=that path)"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("reference-model")(reference_model_cmd)
