"""The effective-robustness scatter: shift accuracy vs in-distribution accuracy on logit axes.

One panel per shift plus one for the average over shifts. Each panel shows the baseline models,
their fitted line (straight on logit axes), ``y = x`` (no accuracy lost under the shift) and one
labelled point per evaluated model, like the CLIP and open_clip robustness figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from upath import UPath

from curation.core import storage
from curation.core.io import atomic_path
from trainer.robustness import AVERAGE, Point, RobustnessReport, logit, sigmoid

BASELINE_COLOR = "#1f77b4"
FIT_COLOR = "#d62728"
IDENTITY_COLOR = "#7f7f7f"
MODEL_COLORS = ("#9467bd", "#ff7f0e", "#2ca02c", "#e377c2", "#8c564b", "#17becf")
LIMIT = 1e-3  # logit axes cannot show 0 or 1
TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


def model_colors(models: list[str]) -> dict[str, str]:
    return {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(sorted(set(models)))}


def _limits(points: list[Point]) -> tuple[float, float]:
    values = np.array([v for p in points for v in (p.acc_id, p.acc_shift)])
    lo, hi = logit(values.min()), logit(values.max())
    pad = 0.15 * max(hi - lo, 1.0)
    return (
        float(np.clip(sigmoid(lo - pad), LIMIT, 1 - LIMIT)),
        float(np.clip(sigmoid(hi + pad), LIMIT, 1 - LIMIT)),
    )


def _percent(value: float, _pos: int) -> str:
    return f"{100 * value:.3g}%"


def draw_robustness_panel(ax: plt.Axes, report: RobustnessReport, shift: str, colors: dict[str, str]) -> None:
    base = [p for p in report.baselines if p.shift == shift]
    models = [p for p in report.models if p.shift == shift]
    lo, hi = _limits(base + models)
    ax.set_xscale("logit")
    ax.set_yscale("logit")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    grid = sigmoid(np.linspace(logit(lo), logit(hi), 200))
    ax.plot(grid, grid, linestyle="--", color=IDENTITY_COLOR, linewidth=1.2, label="y = x")
    fit = report.fits[shift]
    ax.plot(
        grid,
        fit.predict(grid),
        color=FIT_COLOR,
        linewidth=1.8,
        label=f"baseline fit (slope {fit.slope:.2f}, n={fit.n})",
    )
    if base:
        ax.scatter(
            [p.acc_id for p in base],
            [p.acc_shift for p in base],
            s=22,
            color=BASELINE_COLOR,
            label="baseline models",
            zorder=3,
        )
    for p in models:
        er = "" if p.er is None else f" (ER {100 * p.er:+.1f} pts)"
        ax.scatter(
            [p.acc_id],
            [p.acc_shift],
            s=90,
            marker="*",
            color=colors[p.model],
            zorder=4,
            label=f"{p.model}{er}",
        )
        ax.annotate(p.model, (p.acc_id, p.acc_shift), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ticks = [t for t in TICKS if lo <= t <= hi]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(_percent))
    title = "average over shifts" if shift == AVERAGE else shift
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{report.id_dataset} accuracy (in-distribution)")
    ax.set_ylabel("shift accuracy")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")


def plot_effective_robustness(
    report: RobustnessReport,
    out: str | Path | UPath | None = None,
    svg: bool = False,
    include_average: bool = True,
) -> Figure:
    """Draw the report; write ``out`` (PNG) and, with ``svg``, the same name with ``.svg``."""
    shifts = list(report.shifts) + ([AVERAGE] if include_average and len(report.shifts) > 1 else [])
    ncols = min(3, len(shifts))
    nrows = math.ceil(len(shifts) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.4 * nrows), squeeze=False)
    colors = model_colors([p.model for p in report.models])
    for ax, shift in zip(axes.flat, shifts, strict=False):
        draw_robustness_panel(ax, report, shift, colors)
    for ax in list(axes.flat)[len(shifts) :]:
        ax.set_visible(False)
    fig.suptitle("Effective robustness (logit axes)", fontsize=12)
    fig.tight_layout()
    if out is not None:
        out = storage.location(out)  # a path or a URL
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=150)
        if svg:
            with atomic_path(out.with_suffix(".svg")) as tmp:
                fig.savefig(tmp, format="svg")
    return fig
