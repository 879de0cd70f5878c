"""The ``curate`` command line: one subcommand per stage.

Subcommands live next to their jobs: every module in ``pipelines/`` that defines
``register(app)`` adds its commands, so a new stage never edits this file.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

import pipelines
from curation import __version__
from curation.core.config import ConfigError

console = Console(stderr=True)

app = typer.Typer(
    name="curate",
    help="Curate CLIP pre-training sets from web image-text pairs and measure what each set is worth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for noisy in ("py4j", "urllib3", "PIL", "matplotlib", "filelock", "botocore", "aiobotocore", "s3fs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())


class RedactSecrets(logging.Filter):
    """Storage credentials never reach a log line, whoever logs them (botocore, a stage, a traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from curation.core.storage import redact

        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def register_all(target: typer.Typer) -> None:
    """Import every ``pipelines`` module and let it add its subcommands."""
    for info in sorted(pkgutil.iter_modules(pipelines.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"pipelines.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(target)


register_all(app)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        sys.exit(2)
    except OSError as exc:
        from curation.core.storage import StorageError, redact

        if not isinstance(exc, StorageError):
            raise
        console.print(f"[red]storage error:[/red] {redact(str(exc))}", soft_wrap=True, highlight=False)
        sys.exit(2)
