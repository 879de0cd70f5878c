"""``curate select``: a subset (DataComp .npy + manifest + funnel) from scores, verdicts and set ops."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from curation.core.config import ConfigError, apply_overrides, build, read_yaml
from pipelines.options import (
    AddressOpt,
    ConfigOpt,
    EngineOpt,
    MasterOpt,
    SetOpt,
    WorkersOpt,
    console,
    print_funnel_table,
)

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.
if TYPE_CHECKING:
    from curation.selection.run import SelectSpec

StepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--step",
        help="A step as inline YAML, appended to the config's steps (repeatable), e.g. "
        "--step 'topk: {score: clip_l14_similarity_score, fraction: 0.3}'.",
    ),
]


def load_spec(config: Path | None, steps: list[str], overrides: list[str]) -> SelectSpec:
    """The config file (if any), plus inline steps, plus ``--set`` overrides, validated."""
    from curation.selection.run import SelectSpec

    data = read_yaml(config) if config else {}
    if steps:
        parsed = []
        for s in steps:
            try:
                parsed.append(yaml.safe_load(s))
            except yaml.YAMLError as exc:
                raise ConfigError(f"--step {s!r} is not valid YAML: {exc}") from exc
        data["steps"] = [*data.get("steps", []), *parsed]
    data = apply_overrides(data, overrides)
    return build(SelectSpec, data, source=str(config) if config else "--step")


def select_command(
    pool: Annotated[str, typer.Argument(help="Pool directory (img2dataset layout or DataComp metadata).")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Subset to write (.npy; manifest .json beside it).")
    ],
    config: ConfigOpt = None,
    step: StepOpt = None,
    overrides: SetOpt = None,
    engine: EngineOpt = "local",
    workers: WorkersOpt = 1,
    master: MasterOpt = None,
    address: AddressOpt = None,
    keep_work: Annotated[bool, typer.Option(help="Keep gathered columns and DuckDB spill files.")] = False,
) -> None:
    """Select a subset: exact top-k% by any score, thresholds, filters, random controls, set operations."""
    from curation.core.stagedef import STAGES
    from curation.core.stats import Funnel
    from curation.engines import open_engine

    spec = load_spec(config, step or [], overrides or [])
    stage = STAGES.get("select")
    inputs = stage.make_inputs({"pool": pool, "out": out, "keep_work": keep_work}, "command line")
    with open_engine(engine, workers, master, address) as eng:
        summary = stage.run(inputs, spec, eng).summary
    print_funnel_table(f"select {spec.name}", Funnel.from_dict(summary["funnel"]))
    for d in summary["decisions"]:
        cut = d.get("cut", {})
        kept = d.get("kept", cut.get("k", ""))
        console.print(
            f"{d['step']}: kept {kept} of {cut.get('candidates', '')} "
            f"(cut at rank {cut.get('k')}, value {cut.get('value')!r}, "
            f"boundary uid {cut.get('boundary_uid')})"
            if cut
            else f"{d['step']}: {d}"
        )
    console.print(f"wrote {summary['subset']} ({summary['uids']} uids, {summary['distinct']} distinct)")


def register(app: typer.Typer) -> None:
    app.command("select")(select_command)
