"""``curate synth OUT``: generate the synthetic crawl; ``curate serve DIR``: serve it on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from pipelines.options import ConfigOpt, SetOpt

log = logging.getLogger(__name__)


def synth(
    out: Annotated[Path, typer.Argument(help="Output directory (must not exist unless --overwrite).")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Master seed (overrides the config).")] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Url prefix written into crawl.parquet (uids ignore it).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes (0: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate the synthetic web crawl, its ground truth, test suite, seed set and ImageNet analogue."""
    from curation.core.stagedef import STAGES

    sets = list(overrides or [])
    sets += [f"seed={seed}"] if seed is not None else []
    sets += [f"base_url={base_url}"] if base_url is not None else []
    sets += [f"workers={workers}"] if workers is not None else []
    if out.exists() and not overwrite:
        raise typer.BadParameter(f"{out} exists; pass --overwrite to replace it", param_hint="OUT")
    stage = STAGES.get("synth")
    inputs = stage.make_inputs({"out": out, "overwrite": overwrite, "progress": True})
    manifest = stage.run(inputs, stage.load_config(config, None, sets), None).summary["manifest"]
    crawl = manifest["crawl"]
    junk = crawl["pairs"] - crawl["by_kind"].get("clean", 0)
    typer.echo(
        f"{out}: {crawl['pairs']} pairs ({junk / crawl['pairs']:.0%} junk, "
        f"{crawl['downloadable']} downloadable), "
        f"suite {sum(manifest['suite'].values())} images, seed set {manifest['seed_set']}, "
        f"imagenet {manifest['imagenet']['train']}"
    )


def serve_cmd(
    root: Annotated[
        Path, typer.Argument(help="A directory written by `curate synth`.", exists=True, file_okay=False)
    ],
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="Port (default: the one in the manifest's base_url).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", help="Allow binding a non-loopback interface (exposes the files)."),
    ] = False,
) -> None:
    """Serve DIR/web with the faults of DIR/faults.json until Ctrl-C."""
    from curation.synth.server import serve

    if port is None:
        port = _manifest_port(root)
    try:
        server = serve(root, host, port, allow_remote=allow_remote)
    except PermissionError as exc:
        raise typer.BadParameter(str(exc), param_hint="--host") from exc
    with server:
        typer.echo(f"serving {root / 'web'} at {server.base_url} (Ctrl-C to stop)")
        try:
            server.wait()
        except KeyboardInterrupt:
            typer.echo("stopped")


def _manifest_port(root: Path) -> int:
    manifest = root / "manifest.json"
    if not manifest.exists():
        return 8000
    url = urlsplit(json.loads(manifest.read_text())["base_url"])
    return url.port or 80


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("serve")(serve_cmd)
