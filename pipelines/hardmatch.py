"""``curate hardmatch``: label captions with the one class they name (the YFCC-hardmatch recipe)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    WorkersOpt,
    console,
    run_stage,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.

log = logging.getLogger(__name__)


InputArg = Annotated[
    str, typer.Argument(help="A pool, a parquet file, or a folder of parquet files with uid + caption/text.")
]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output folder.")]
ClassesOpt = Annotated[
    str | None, typer.Option(help="'imagenet' (open_clip's 1,000 names) or a file with one class per line.")
]
SynonymsOpt = Annotated[
    Path | None, typer.Option(help="YAML: class name -> [synonyms].", exists=True, dir_okay=False)
]
AmbiguousOpt = Annotated[str | None, typer.Option(help="Captions naming several classes: drop or first.")]
GroundTruthOpt = Annotated[
    Path | None,
    typer.Option(help="Parquet with uid, class_name, caption_names_class: adds precision and recall."),
]
OverwriteOpt = Annotated[bool, typer.Option(help="Discard the matches of an earlier run in OUT.")]


def hardmatch_command(
    input_path: InputArg,
    out: OutOpt,
    classes: ClassesOpt = None,
    synonyms: SynonymsOpt = None,
    ambiguous: AmbiguousOpt = None,
    ground_truth: GroundTruthOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
    master: MasterOpt = None,
    address: AddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write OUT/hardmatch.npy (subset), OUT/labels.parquet (uid, label, class_name), OUT/report.{json,md}.

    The shipped ImageNet synonyms belong to the ImageNet names: with --classes FILE they are not used
    unless --synonyms is given.
    """
    from curation.core.stagedef import STAGES

    cfg = STAGES.get("hardmatch").load_config(config, None, overrides or [])
    updates: dict[str, object] = {}
    if classes is not None and classes != cfg.classes:
        updates["classes"] = classes
        if synonyms is None and cfg.synonyms is not None:
            shipped = config or "the default config"
            log.info("--classes %s: the synonyms of %s are not used (add --synonyms)", classes, shipped)
            updates["synonyms"] = None
    if synonyms is not None:
        updates["synonyms"] = synonyms
    if ambiguous is not None:
        updates["ambiguous"] = ambiguous
    inputs = {"input": input_path, "out": out, "ground_truth": ground_truth, "overwrite": overwrite}
    run_stage(
        "hardmatch", inputs, config=config, overrides=overrides,
        settings=updates,
        engine=engine, workers=workers, master=master, address=address,
    )  # fmt: skip
    from curation.core import storage

    console.print(storage.read_text(storage.location(out) / "report.md"))


def register(app: typer.Typer) -> None:
    app.command("hardmatch")(hardmatch_command)
