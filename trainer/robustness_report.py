"""Effective robustness from accuracy tables to files: ``robustness.json``, ``robustness.csv``, the plot.

No torch here: ``curate robustness`` works on results files alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from upath import UPath

from curation.core.io import atomic_write_json, atomic_write_text
from trainer.robustness import MEAN_OF_SHIFTS, BootstrapConfig, RobustnessReport, compute_report, infer_roles

log = logging.getLogger(__name__)


def report_robustness(
    evaluated: pd.DataFrame,
    baseline: pd.DataFrame,
    out_dir: Path | UPath,  # a folder or a URL
    id_dataset: str | None = None,
    shifts: Sequence[str] | None = None,
    boot: BootstrapConfig | None = None,
    svg: bool = False,
) -> RobustnessReport:
    """Fit the baselines, compute ER (+ CIs) for the evaluated models, write JSON, CSV and the plot."""
    from trainer.plots import plot_effective_robustness  # matplotlib, only when plotting

    if id_dataset is None or not shifts:
        inferred_id, inferred_shifts = infer_roles(evaluated)
        id_dataset = id_dataset or inferred_id
        shifts = shifts or inferred_shifts
    report = compute_report(evaluated, baseline, id_dataset, list(shifts), boot)
    atomic_write_json(out_dir / "robustness.json", report.to_dict())
    atomic_write_text(out_dir / "robustness.csv", report.to_frame().to_csv(index=False))
    plot_effective_robustness(report, out_dir / "effective_robustness.png", svg=svg)
    for p in report.models:
        if p.shift == MEAN_OF_SHIFTS and p.extrapolated:
            log.warning(
                "%s: in-distribution accuracy %.3f lies outside the baselines' range; its ER extrapolates "
                "the baseline line",
                p.model,
                p.acc_id,
            )
        if p.shift == MEAN_OF_SHIFTS:
            ci = f" [{100 * p.ci[0]:+.2f}, {100 * p.ci[1]:+.2f}]" if p.ci else ""
            log.info("%s: mean effective robustness %+.2f points%s", p.model, 100 * (p.er or 0), ci)
    return report
