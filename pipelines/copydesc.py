"""``curate copydesc`` and ``curate train-encoder``: copy-detection descriptors of every pool image (for
near dedup and SemDeDup), and the self-supervised encoder they may use."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.options import ConfigOpt, EngineOpt, SetOpt, WorkersOpt, console, run_stage

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.


def copydesc_command(
    pool: Annotated[str, typer.Argument(help="Pool directory (img2dataset layout, with tars).")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
) -> None:
    """Write POOL/attributes/<column>/ (thumbnail + colour-histogram descriptors, or --set kind=encoder
    --set encoder=PATH for a TorchScript encoder's embeddings) for near dedup and SemDeDup."""
    run_stage("copydesc", {"pool": pool}, config=config, overrides=overrides, engine=engine, workers=workers)


def train_encoder_command(
    pool: Annotated[str, typer.Argument(help="Pool directory (img2dataset layout, with tars).")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Where to write the encoder (.pt; figures beside it).")
    ],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Fit a copy-detection encoder on the pool's own thumbnails (SSCD's contrastive recipe; GPU if any)."""
    r = run_stage("train_encoder", {"pool": pool, "out": out}, config=config, overrides=overrides).summary
    console.print(
        f"encoder -> {r['encoder']}: {r['images']:,} images, {r['seconds']:.0f} s; loss "
        f"{r['losses'][0]} -> {r['losses'][-1]}; an augmented view finds its image first "
        f"{r['view_top1']:.1%} of the time"
    )


def register(app: typer.Typer) -> None:
    app.command("copydesc")(copydesc_command)
    app.command("train-encoder")(train_encoder_command)
