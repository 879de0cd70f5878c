"""Launching a training process: its environment, and its step lines streamed to a progress bar.

Training always runs in a child process (both trainers): it gets its own environment, the same
launch works under torchrun, and a crash of the training cannot take the CLI with it.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections import deque
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from curation.core import storage
from curation.core.progress import bar
from trainer.budget import Budget
from trainer.oclog import StepLine, parse_line
from trainer.plan import TrainError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPECTED_WARNING = "No pretrained weights loaded"  # training from scratch is the point


def subprocess_env() -> dict[str, str]:
    """The training process's environment: this one, plus the project on the path and the configured
    storage options (so it, and the ``pipe:`` readers of shards on object storage, open the same URLs)."""
    env = dict(os.environ)
    env.update(storage.worker_env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    # Busy-waiting OpenMP threads stall badly when cores are shared (10x slower steps measured on a
    # loaded 2-core machine); passive waiting costs nothing measurable on an idle one.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ProgressReporter:
    """Turns open_clip_train's step lines into a rich progress bar and concise log lines."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.progress = bar(
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("samples  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.task = self.progress.add_task("train", total=budget.chunks * budget.samples_per_chunk, loss="-")

    def __enter__(self) -> ProgressReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def step(self, s: StepLine) -> None:
        self.progress.update(
            self.task,
            total=self.budget.chunks * s.total,
            completed=s.epoch * s.total + s.done,
            loss=f"{s.loss:.4f}",
        )
        log.info(
            "epoch %d/%d  %d/%d samples  loss %.4f (avg %.4f)  lr %.3g  %.0f samples/s",
            s.epoch + 1, self.budget.chunks, s.done, s.total, s.loss, s.loss_avg, s.lr, s.samples_per_s,
        )  # fmt: skip


def run_training_subprocess(cmd: list[str], log_dir: Path, budget: Budget, what: str) -> None:
    """Run a training process to its end, streaming its step lines to the progress bar; raise on failure.

    Training always runs in a child process: it gets its own environment (``subprocess_env``), the
    same launch works under torchrun, and a crash of the training cannot take the CLI with it.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s", what, shlex.join(cmd[1:]))
    tail: deque[str] = deque(maxlen=40)
    with (
        open(log_dir / "console.log", "a", encoding="utf-8") as console,
        ProgressReporter(budget) as reporter,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=subprocess_env(),
        ) as proc,
    ):
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                console.write(line)
                tail.append(line.rstrip())
                step = parse_line(line)
                if step is not None:
                    reporter.step(step)
                elif ("| WARNING |" in line or "| ERROR |" in line) and EXPECTED_WARNING not in line:
                    log.warning("%s: %s", what, line.split("| ", 2)[-1].strip())
        except BaseException:
            proc.terminate()
            raise
        rc = proc.wait()
    if rc != 0:
        raise TrainError(
            f"{what} exited with status {rc}; last output:\n" + "\n".join(tail)
            + f"\n(full output: {log_dir / 'console.log'})"
        )  # fmt: skip
