"""``curate score``: cosine similarity of every image-text pair of a pool under a reference CLIP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from curation.core.config import ConfigError
from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    run_stage,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.
if TYPE_CHECKING:
    from curation.scoring import ScoreConfig

Opt = typer.Option


def score_command(
    pool: Annotated[str, typer.Argument(help="Pool directory in img2dataset's webdataset layout.")],
    model: Annotated[
        str | None, Opt("--model", "-m", help="open_clip model name (ViT-B-32, tiny-vit).")
    ] = None,
    pretrained: Annotated[
        str | None, Opt("--pretrained", "-p", help="open_clip pretrained tag or checkpoint path.")
    ] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda (all GPUs) | cuda:N | cuda:0,cuda:2.")] = None,
    precision: Annotated[str | None, Opt(help="auto | fp32 | fp16 | bf16 (autocast).")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", "-b", min=1)] = None,
    workers: Annotated[
        int | None, Opt("--workers", "-w", min=1, help="Model processes; default one per GPU, 1 on CPU.")
    ] = None,
    loader_workers: Annotated[
        int | None, Opt("--loader-workers", min=0, help="Decode processes per model process.")
    ] = None,
    embeddings: Annotated[
        bool | None, Opt("--embeddings/--no-embeddings", help="Store image_emb/text_emb (float16).")
    ] = None,
    column: Annotated[
        str | None, Opt(help="Score column and attribute folder (default clip_score_<model>).")
    ] = None,
    engine: EngineOpt = "local",
    master: MasterOpt = None,
    address: AddressOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Score every pair of POOL into POOL/attributes/<column>/; a rerun skips finished shards."""
    from curation.core.pool import PoolError
    from curation.core.stagedef import STAGES
    from curation.scoring import ModelLoadError

    flags = {
        "model": model,
        "pretrained": pretrained,
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "loader_workers": loader_workers,
        "embeddings": embeddings,
        "column": column,
    }
    stage = STAGES.get("score")
    check_weights(stage.config_data(config, drop_none(flags), overrides or []), config)
    cfg = stage.load_config(config, drop_none(flags), overrides or [])
    run_stage(
        "score", {"pool": pool}, config=config, overrides=overrides, settings=drop_none(flags),
        engine=engine, workers=workers or default_workers(cfg), master=master, address=address,
        errors=(ModelLoadError, PoolError),
    )  # fmt: skip


def drop_none(flags: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}


def check_weights(data: dict[str, Any], path: Path | None) -> None:
    """Weights must be named (a random model needs an explicit ``pretrained: null``): say what to pass."""
    if "pretrained" not in data:
        raise ConfigError(
            f"{path or 'flags'}: no weights given; pass --pretrained with an open_clip tag of the model "
            "or a checkpoint path (the demo's reference model: the trainer's checkpoint)"
        )


def default_workers(cfg: ScoreConfig) -> int:
    """One model process per GPU; a single one on the CPU (it uses all cores itself)."""
    from curation.scoring.model import resolve_devices

    devices = resolve_devices(cfg.device)
    return len(devices) if all(d.type == "cuda" for d in devices) else 1


def register(app: typer.Typer) -> None:
    app.command("score")(score_command)
