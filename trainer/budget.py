"""The two training budgets of the data-ablation papers.

- ``one_epoch``: every sample of the curated set is seen once (samples seen = subset size, read
  without replacement), so a bigger set also gets more compute.
- ``equal_samples``: every set gets the same number of samples seen (the preset's budget or
  ``--samples-seen``), drawn with replacement (``--dataset-resampled``), as DataComp does; the
  budget is cut into ``checkpoints`` chunks (open_clip_train epochs), which are the resume points.

A one-epoch pass is a single open_clip_train epoch, so an interrupted one-epoch run restarts its
pass; a long run that must survive interruptions is an ``equal_samples`` run whose budget is the
subset size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from trainer.presets import Preset

Mode = Literal["one_epoch", "equal_samples"]
MODES: tuple[str, ...] = ("one_epoch", "equal_samples")


class BudgetError(ValueError):
    """A budget that cannot be trained (no full batch, unknown mode, contradictory options)."""


@dataclass(frozen=True)
class Budget:
    mode: str
    samples_seen: int  # requested; the trainer records what it actually saw
    chunks: int  # open_clip_train epochs (resume points)
    samples_per_chunk: int
    resampled: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_budget(mode: str, subset_size: int, preset: Preset, samples_seen: int | None = None) -> Budget:
    if mode == "one_epoch":
        if samples_seen is not None and samples_seen != subset_size:
            raise BudgetError(
                f"one_epoch fixes samples seen to the subset size ({subset_size}); "
                f"use --mode equal_samples for a budget of {samples_seen}"
            )
        budget = Budget(mode, subset_size, 1, subset_size, resampled=False)
    elif mode == "equal_samples":
        total = samples_seen if samples_seen is not None else preset.samples_seen
        if total < 1:
            raise BudgetError(f"samples seen must be positive, got {total}")
        chunks = max(1, min(preset.checkpoints, total // preset.batch_size))
        budget = Budget(mode, total, chunks, math.ceil(total / chunks), resampled=True)
    else:
        raise BudgetError(f"unknown budget mode {mode!r}; one of {', '.join(MODES)}")
    if budget.samples_per_chunk < preset.batch_size:
        raise BudgetError(
            f"{budget.samples_per_chunk} samples per chunk is less than one batch of {preset.batch_size}; "
            "lower batch_size (--set batch_size=N) or raise the budget"
        )
    return budget
