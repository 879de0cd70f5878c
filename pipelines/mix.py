"""``curate mix``: one subset drawn from several sources by weights or by counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from curation.core.config import ConfigError, apply_overrides, build, read_yaml
from pipelines.options import ConfigOpt, SetOpt, console

# Heavy imports (torch, open_clip, pandas, ...) live inside the commands so `curate --help` stays fast.
if TYPE_CHECKING:
    from curation.builders.mixing import MixResult

InputsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Inputs: a pool or parquet table (sources from its 'source' column), or NAME=PATH "
        "(every sample of PATH, e.g. a subset .npy, belongs to source NAME)."
    ),
]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output subset .npy (manifest beside it).")]
WeightOpt = Annotated[list[str] | None, typer.Option("--weight", "-w", help="SOURCE=WEIGHT (repeatable).")]
CountOpt = Annotated[list[str] | None, typer.Option("--count", "-n", help="SOURCE=COUNT (repeatable).")]
TotalOpt = Annotated[int | None, typer.Option("--total", "-t", help="Target total size with --weight.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (same seed, same mix).")]
SamplingOpt = Annotated[
    str | None, typer.Option("--sampling", help="without_replacement, with_replacement or repeat.")
]
ShortfallOpt = Annotated[str | None, typer.Option("--shortfall", help="cap, shrink or error.")]
OverlapOpt = Annotated[
    str | None,
    typer.Option("--overlap", help="A uid in several inputs: exclude (drawn by one source) or allow."),
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Error when a source cannot give its share.")]


def _pairs(items: list[str] | None, what: str, cast: type) -> dict[str, Any] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{what} {item!r}: expected SOURCE={what.upper()}")
        try:
            out[key] = cast(value)
        except ValueError as exc:
            raise ConfigError(f"--{what} {item!r}: {value!r} is not a {cast.__name__}") from exc
    return out


def _input(item: str) -> dict[str, Any]:
    """``PATH`` or ``NAME=PATH`` (a name never contains a path separator)."""
    name, sep, path = item.partition("=")
    if sep and name and "/" not in name:
        return {"path": path, "source": name}
    return {"path": item}


def _print(result: MixResult, path: Path) -> None:
    m = result.subset.manifest
    title = f"mix {m['name']}: {m['total_selected']} of {m['total_requested']} requested -> {path}"
    table = Table(title=title)
    for col in ["source", "available", "requested", "selected", "unique", "shortfall", "asked %", "got %"]:
        table.add_column(col, justify="left" if col == "source" else "right")
    for s, r in m["sources"].items():
        table.add_row(
            s,
            *(str(r[k]) for k in ("available", "requested", "selected", "unique", "shortfall")),
            f"{100 * r['requested_proportion']:.2f}",
            f"{100 * r['actual_proportion']:.2f}",
        )
    console.print(table)
    for note in m["notes"]:
        console.print(f"[yellow]{note}[/yellow]")


def mix_command(
    inputs: InputsArg = None,
    out: OutOpt = "mix.npy",
    weight: WeightOpt = None,
    count: CountOpt = None,
    total: TotalOpt = None,
    seed: SeedOpt = None,
    sampling: SamplingOpt = None,
    shortfall: ShortfallOpt = None,
    overlap: OverlapOpt = None,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Mix sources by weights (with a total) or by counts; writes OUT.npy, OUT.json, OUT.sources.parquet."""
    from curation.builders.mixing import MixConfig, MixError, run_mix

    data = apply_overrides(read_yaml(config) if config else {}, overrides or [])
    data["inputs"] = [*data.get("inputs", []), *(_input(i) for i in inputs or [])]
    cli = {
        "weights": _pairs(weight, "weight", float),
        "counts": _pairs(count, "count", int),
        "total": total,
        "seed": seed,
        "sampling": sampling,
        "shortfall": "error" if strict else shortfall,
        "overlap": overlap,
    }
    if cli["weights"] is not None or cli["counts"] is not None:  # the command line replaces the spec
        data.pop("weights", None)
        data.pop("counts", None)
    data.update({k: v for k, v in cli.items() if v is not None})
    cfg = build(MixConfig, data, source=str(config or "command line"))
    try:
        path, result = run_mix(cfg, out)
    except MixError as exc:
        console.print(f"[red]mix error:[/red] {exc}")
        raise typer.Exit(1) from exc
    _print(result, path)
    console.print(json.dumps(result.stats.to_dict()["extra"]))


def register(app: typer.Typer) -> None:
    app.command("mix")(mix_command)
