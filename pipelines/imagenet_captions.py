"""``curate imagenet-captions``: ImageNet images joined with their Flickr text into a captioned pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curation.core.config import CONF_DIR, load_config
from pipelines.options import ConfigOpt, EngineOpt, SetOpt, WorkersOpt, console, finish, print_funnel

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.

DEFAULT_CONFIG = CONF_DIR / "imagenet_captions" / "default.yaml"

IndexArg = Annotated[
    Path, typer.Argument(help="Image index parquet: image_id, label, flickr_id (class_name).", exists=True)
]
MetaArg = Annotated[
    Path,
    typer.Argument(
        help="Flickr metadata: parquet (photo_id, title, description, tags) or YFCC100M TSV.", exists=True
    ),
]
ImagesOpt = Annotated[
    Path, typer.Option("--images", help="Folder of images (<wnid>/<image_id>.JPEG) or webdataset tars.")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output pool folder.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace a pool built earlier in OUT.")]


def imagenet_captions_command(
    index: IndexArg,
    meta: MetaArg,
    images: ImagesOpt,
    out: OutOpt,
    config: ConfigOpt = DEFAULT_CONFIG,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a pool (NNNNN.tar: jpg/txt/json/cls; NNNNN.parquet: every index row) and OUT/report.md."""
    from curation.builders.imagenet_captions import ImagenetCaptionsConfig, run_imagenet_captions

    cfg = load_config(ImagenetCaptionsConfig, config, overrides or [])
    job_report, _ = run_imagenet_captions(index, meta, images, out, cfg, engine, workers, overwrite)
    print_funnel(job_report)
    finish(job_report)
    console.print((out / "report.md").read_text())


def register(app: typer.Typer) -> None:
    app.command("imagenet-captions")(imagenet_captions_command)
