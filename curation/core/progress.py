"""Progress bars for long work (rich), quiet when output is not a terminal.

Every bar in the project is made here (:func:`bar`, :func:`make_progress`): on a terminal it
redraws in place; in a log file or a pipe it is disabled, since rich would leave its final frame,
or a blank line for a transient bar, in the log for every bar drawn.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def bar(*columns: Any, transient: bool = False) -> Progress:
    """A progress bar with these columns on stderr, disabled when stderr is not a terminal."""
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)


def make_progress(*extra_columns: Any) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


@contextlib.contextmanager
def shard_progress(description: str, total: int) -> Iterator[Callable[[Any], None]]:
    """A bar over shards; the callback advances it by one shard outcome and counts its samples.

    Samples are those the shard's first stage saw, counted for shards processed now (not skipped
    ones), so the rate is this run's samples per second, start-up included.
    """
    with make_progress(TextColumn("{task.fields[samples]}")) as progress:
        task = progress.add_task(description, total=total, samples="")
        start, samples = time.perf_counter(), 0

        def advance(outcome: Any) -> None:
            nonlocal samples
            if getattr(outcome, "status", None) == "done" and outcome.stats:
                samples += outcome.stats[0].total.seen
                rate = samples / max(time.perf_counter() - start, 1e-9)
                progress.update(task, samples=f"{samples:,} samples, {rate:,.1f}/s")
            progress.advance(task)

        yield advance
