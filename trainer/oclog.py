"""Reading open_clip_train's progress lines, for the progress bar and for the run summary.

open_clip_train logs ``Train Epoch: E [done/total (p%)] ... LR: x ... Loss: cur (avg)`` every
``--log-every-n-steps`` steps and always at the last step of an epoch; its ``out.log`` is appended
to across resumes, so samples seen and the final loss can be read back from it after the fact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TRAIN_LINE = re.compile(
    rf"Train Epoch: (?P<epoch>\d+) \[\s*(?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\)\]"
    rf".*?(?P<sps>{_NUM})/s,.*?LR: (?P<lr>{_NUM}).*Loss: (?P<loss>{_NUM}) \((?P<avg>{_NUM})\)\s*$"
)


@dataclass(frozen=True)
class StepLine:
    epoch: int
    done: int  # samples of this epoch done (all ranks)
    total: int  # samples per epoch
    samples_per_s: float
    lr: float
    loss: float
    loss_avg: float  # over the logged steps of this epoch


def format_step(s: StepLine) -> str:
    """A step line in open_clip_train's format, for loops of ours (the supervised baseline)."""
    return (
        f"Train Epoch: {s.epoch} [{s.done}/{s.total} ({100 * s.done / s.total:.0f}%)] "
        f"{s.samples_per_s:#g}/s, LR: {s.lr:f} Loss: {s.loss:#.5g} ({s.loss_avg:#.5g})"
    )


def parse_line(line: str) -> StepLine | None:
    m = TRAIN_LINE.search(line)
    if m is None:
        return None
    return StepLine(
        int(m["epoch"]),
        int(m["done"]),
        int(m["total"]),
        float(m["sps"]),
        float(m["lr"]),
        float(m["loss"]),
        float(m["avg"]),
    )


@dataclass(frozen=True)
class LogSummary:
    samples_seen: int  # sum over epochs of the samples the last logged step had reached
    epochs: int
    final_loss: float | None
    final_loss_avg: float | None


def summarize(lines: Iterable[str]) -> LogSummary:
    """Samples seen per epoch (the furthest logged step; a re-run epoch counts once) and last loss."""
    furthest: dict[int, int] = {}
    last: StepLine | None = None
    for line in lines:
        step = parse_line(line)
        if step is None:
            continue
        furthest[step.epoch] = max(furthest.get(step.epoch, 0), step.done)
        last = step
    return LogSummary(
        sum(furthest.values()),
        len(furthest),
        last.loss if last else None,
        last.loss_avg if last else None,
    )


def summarize_file(path: Path) -> LogSummary:
    with open(path, encoding="utf-8", errors="replace") as f:
        return summarize(f)
