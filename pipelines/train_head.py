"""``curate train-head`` and ``curate score-head``: learned quality heads on stored embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import EngineOpt, WorkersOpt, console, run_stage

DEFAULT_EMBEDDINGS = "clip_score_vit_b_32:image_emb"
EmbeddingsOpt = Annotated[str, typer.Option(help="STAGE:COLUMN of the embeddings.")]


def _ref(value: str) -> dict:
    stage, sep, column = value.rpartition(":")
    if not sep:
        raise typer.BadParameter(f"expected STAGE:COLUMN, got {value!r}")
    return {"attribute": stage, "column": column}


def train_head_command(
    pool: Annotated[str, typer.Argument(help="Pool directory with an embedding attribute stage.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Where to write the head (.pt; figures beside it).")
    ],
    embeddings: Annotated[
        str, typer.Option(help="STAGE:COLUMN of the embeddings.")
    ] = "clip_score_vit_b_32:image_emb",
    labels: Annotated[
        str | None, typer.Option(help="STAGE:COLUMN of a label column (bool or number).")
    ] = None,
    positives: Annotated[Path | None, typer.Option(help="File of positive uids, one a line.")] = None,
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes, comma-separated; empty: linear.")] = "128",
    holdout: Annotated[float, typer.Option(help="Share of labelled samples held out for the AUC.")] = 0.2,
    epochs: Annotated[int, typer.Option()] = 300,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fit a linear/MLP head from labelled examples; print its held-out ROC AUC."""
    from curation.core.stagedef import STAGES

    stage = STAGES.get("train_head")
    cfg = stage.load_config(
        None,
        {
            "embeddings": _ref(embeddings),
            "labels": _ref(labels) if labels else None,
            "positives": positives,
            "hidden": [int(h) for h in hidden.split(",") if h.strip()],
            "holdout": holdout,
            "epochs": epochs,
            "seed": seed,
        },
    )
    r = stage.run(stage.make_inputs({"pool": pool, "out": out}), cfg, None).summary
    auc = "n/a" if r["holdout_auc"] is None else f"{r['holdout_auc']:.4f}"
    console.print(
        f"head -> {r['head']}: trained on {r['n_train']}, held out {r['n_holdout']} "
        f"({r['positives']} positives in all); held-out ROC AUC {auc}"
    )


def score_head_command(
    pool: Annotated[str, typer.Argument(help="Pool directory with an embedding attribute stage.")],
    head: Annotated[str, typer.Option(help="The head: curate train-head's .pt or a bare state dict.")],
    embeddings: Annotated[
        str, typer.Option(help="STAGE:COLUMN of the embeddings.")
    ] = "clip_score_vit_b_32:image_emb",
    name: Annotated[str, typer.Option(help="Attribute stage and score column to write.")] = "quality",
    activation: Annotated[str | None, typer.Option(help="relu, gelu or none (bare state dicts).")] = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
) -> None:
    """Write POOL/attributes/<name>/ with the head's score of every sample's embedding."""
    settings = {"head": head, "embeddings": _ref(embeddings), "name": name, "activation": activation}
    run_stage("score_head", {"pool": pool}, settings=settings, engine=engine, workers=workers)


def register(app: typer.Typer) -> None:
    app.command("train-head")(train_head_command)
    app.command("score-head")(score_head_command)
