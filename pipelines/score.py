"""``curate score``: cosine similarity of every image-text pair of a pool under a reference CLIP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from curation.core.config import CONF_DIR, ConfigError, apply_overrides, build, read_yaml
from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    console,
    finish,
    print_funnel,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.
if TYPE_CHECKING:
    from curation.scoring import ScoreConfig

Opt = typer.Option


def score_command(
    pool: Annotated[Path, typer.Argument(help="Pool directory in img2dataset's webdataset layout.")],
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
    config: ConfigOpt = CONF_DIR / "score" / "default.yaml",
    overrides: SetOpt = None,
) -> None:
    """Score every pair of POOL into POOL/attributes/<column>/; a rerun skips finished shards."""
    from curation.core.pool import PoolError
    from curation.engines import open_engine
    from curation.scoring import ModelLoadError, score_pool

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
    cfg = load_score_config(config, overrides or [], {k: v for k, v in flags.items() if v is not None})
    try:
        n_workers = workers or default_workers(cfg)
        with open_engine(engine, n_workers, master, address) as eng:
            report = score_pool(pool, cfg, eng)
    except (ModelLoadError, PoolError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    print_funnel(report)
    finish(report)


def load_score_config(path: Path | None, overrides: list[str], flags: dict[str, Any]) -> ScoreConfig:
    """YAML file, then ``--set`` overrides, then explicit flags (the most specific wins)."""
    from curation.scoring import ScoreConfig

    data = apply_overrides(read_yaml(path) if path else {}, overrides)
    data.update(flags)
    if "pretrained" not in data:
        raise ConfigError(
            f"{path or 'flags'}: no weights given; pass --pretrained with an open_clip tag of the model "
            "or a checkpoint path (the demo's reference model: the trainer's checkpoint)"
        )
    return build(ScoreConfig, data, source=str(path) if path else "flags")


def default_workers(cfg: ScoreConfig) -> int:
    """One model process per GPU; a single one on the CPU (it uses all cores itself)."""
    from curation.scoring.model import resolve_devices

    devices = resolve_devices(cfg.device)
    return len(devices) if all(d.type == "cuda" for d in devices) else 1


def register(app: typer.Typer) -> None:
    app.command("score")(score_command)
