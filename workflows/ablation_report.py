"""The ablation's outputs: ``results.csv``, ``results.json`` and one self-contained ``report.html``.

The report has the three figures of the data-quality ablations, as PNGs embedded in the page:
accuracy against the top-k threshold for both budget modes with the random controls (as Li, Xie and
Cubuk's Figure 5), shift against in-distribution accuracy on logit axes with the supervised
baseline line (drawn by :mod:`trainer.plots`), and a power-law fit of error against samples seen
(Cherti et al.); then the table, and what was run. Every string comes from the template with
autoescaping, and the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from curation.core.io import atomic_write_json, atomic_write_text
from curation.core.provenance import code_version
from curation.core.templating import template_env
from trainer.eval_config import load_eval_config
from trainer.powerlaw import PowerLawError, PowerLawFit, fit_power_law
from trainer.robustness import AVERAGE, RobustnessReport
from workflows.ablation_results import Results, build_results, headlines, method_headlines, mix_headlines
from workflows.ablation_spec import AblationConfig, AblationResult

log = logging.getLogger(__name__)

KIND_STYLE = {  # colour, marker per kind of set
    "topk": ("#1f77b4", "o"),
    "random": ("#7f7f7f", "s"),
    "named": ("#2ca02c", "D"),
    "baseline": ("#d62728", "^"),
    "mix": ("#9467bd", "P"),
}
VERSIONED = ("numpy", "pandas", "torch", "open_clip_torch", "matplotlib", "scipy", "duckdb", "pyarrow")


# ---------------------------------------------------------------- figures


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pct(v: Any) -> float:
    return 100 * float(v) if v is not None and not pd.isna(v) else math.nan


def _yerr(rows: pd.DataFrame, col: str) -> np.ndarray | None:
    lo, hi = f"{col}_ci_low", f"{col}_ci_high"
    if lo not in rows or hi not in rows or rows[lo].isna().all():
        return None
    y = rows[col].to_numpy(float)
    return np.abs(np.stack([y - rows[lo].to_numpy(float), rows[hi].to_numpy(float) - y])) * 100


def plot_threshold(table: pd.DataFrame, modes: Sequence[str]) -> Figure | None:
    """In-distribution and mean-shift accuracy against the top-k threshold, per budget mode."""
    ok = table[table.get("acc_id", pd.Series(dtype=float)).notna()] if "acc_id" in table else table.iloc[:0]
    if ok.empty:
        return None
    metrics = [("acc_id", "in-distribution accuracy (%)"), ("acc_shift_mean", "mean shift accuracy (%)")]
    metrics = [m for m in metrics if m[0] in ok]
    fig = Figure(figsize=(5.2 * len(modes), 3.8 * len(metrics)))
    axes = fig.subplots(len(metrics), len(modes), squeeze=False)
    for col_i, mode in enumerate(modes):
        in_mode = ok[ok["mode"] == mode]
        for row_i, (metric, ylabel) in enumerate(metrics):
            ax = axes[row_i][col_i]
            for kind, label, dx in (("topk", "top-k% by score", -0.6), ("random", "random, same size", 0.6)):
                rows = in_mode[in_mode["kind"] == kind].sort_values(["k", "seed"])
                if rows.empty:
                    continue
                color, marker = KIND_STYLE[kind]
                ax.errorbar(
                    rows["k"] + dx,
                    rows[metric] * 100,
                    yerr=_yerr(rows, metric),
                    fmt=marker,
                    color=color,
                    capsize=3,
                    alpha=0.8,
                    label=label,
                )  # fmt: skip  (dx: side by side, so the intervals stay readable)
                mean = rows.groupby("k")[metric].mean()
                ax.plot(mean.index + dx, mean.to_numpy() * 100, color=color, linewidth=1.2)
            named = in_mode[in_mode["kind"] == "named"].groupby("set")[metric].mean()
            for i, (name, value) in enumerate(named.items()):
                ax.axhline(
                    _pct(value), linestyle=":", color=KIND_STYLE["named"][0], alpha=0.5 + 0.5 / (i + 1)
                )
                ax.annotate(str(name), (0.01, _pct(value)), xycoords=("axes fraction", "data"), fontsize=7)
            ax.set_xlabel("top-quality data threshold k (%)")
            ax.set_ylabel(ylabel)
            ax.set_title(mode.replace("_", " "), fontsize=10)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_robustness(report: RobustnessReport, table: pd.DataFrame, modes: Sequence[str]) -> Figure:
    """Shift vs in-distribution accuracy on logit axes, one row per mode (trainer.plots' panels)."""
    from trainer.plots import draw_robustness_panel, model_colors

    shifts = list(report.shifts) + ([AVERAGE] if len(report.shifts) > 1 else [])
    curated = table[(table["kind"] != "baseline") & table["cell"].isin({p.model for p in report.models})]
    rows = [m for m in modes if (curated["mode"] == m).any()] or [None]
    fig = Figure(figsize=(4.8 * len(shifts), 4.6 * len(rows)))
    axes = fig.subplots(len(rows), len(shifts), squeeze=False)
    colors = model_colors(list(_short_labels(curated, by_mode=True).values()))
    for r, mode in enumerate(rows):
        rows_in = curated if mode is None else curated[curated["mode"] == mode]
        short = _short_labels(rows_in, by_mode=mode is not None)
        models = [dataclasses.replace(p, model=short[p.model]) for p in report.models if p.model in short]
        sub = dataclasses.replace(report, models=models)
        for c, shift in enumerate(shifts):
            draw_robustness_panel(axes[r][c], sub, shift, colors)
            if mode is not None:
                axes[r][c].set_title(f"{axes[r][c].get_title()} — {mode.replace('_', ' ')}", fontsize=9)
    fig.suptitle(
        "Effective robustness: curated sets' CLIPs against the supervised baseline line", fontsize=11
    )
    fig.tight_layout()
    return fig


def _short_labels(rows: pd.DataFrame, by_mode: bool) -> dict[str, str]:
    """Cell id -> point label: the set name, plus the seed when there are several (and the mode if mixed)."""
    seeds = rows["seed"].nunique() > 1
    out = {}
    for r in rows.to_dict("records"):
        label = str(r["set"]) + (f" s{r['seed']}" if seeds else "")
        out[r["cell"]] = label if by_mode else f"{label} ({r['mode']})"
    return out


@dataclasses.dataclass
class ScalingFit:
    metric: str
    fit: PowerLawFit | None
    note: str = ""


def fit_scaling(table: pd.DataFrame, offset: bool) -> list[ScalingFit]:
    """Error against samples seen over the finished CLIP cells, for ID and mean-shift accuracy."""
    fits = []
    clip = table[table["kind"] != "baseline"] if "kind" in table else table
    for metric in ("acc_id", "acc_shift_mean"):
        if metric not in clip:
            continue
        rows = clip[clip[metric].notna() & clip["samples_seen"].notna()]
        try:
            fits.append(ScalingFit(metric, fit_power_law(rows["samples_seen"], 1 - rows[metric], offset)))
        except PowerLawError as exc:
            fits.append(ScalingFit(metric, None, str(exc)))
    return fits


def plot_scaling(table: pd.DataFrame, fits: list[ScalingFit]) -> Figure | None:
    if not fits:
        return None
    fig = Figure(figsize=(5.2 * len(fits), 4.0))
    axes = fig.subplots(1, len(fits), squeeze=False)[0]
    clip = table[table["kind"] != "baseline"]
    for ax, sf in zip(axes, fits, strict=True):
        rows = clip[clip[sf.metric].notna() & clip["samples_seen"].notna()]
        for kind, group in rows.groupby("kind"):
            color, marker = KIND_STYLE.get(str(kind), ("#000000", "o"))
            for mode, sub in group.groupby("mode"):
                ax.scatter(
                    sub["samples_seen"], 1 - sub[sf.metric], color=color,
                    marker=marker if mode == "one_epoch" else "x", label=f"{kind}, {mode}", zorder=3,
                )  # fmt: skip
        if sf.fit is not None and len(rows):
            grid = np.geomspace(rows["samples_seen"].min(), rows["samples_seen"].max(), 100)
            ax.plot(
                grid, sf.fit.predict(grid), color="#ff7f0e", label=f"{sf.fit.formula()} (b = {sf.fit.b:.3f})"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples seen")
        name = "in-distribution" if sf.metric == "acc_id" else "mean shift"
        ax.set_ylabel(f"{name} error rate")
        ax.set_title(
            f"{name}: " + (f"exponent b = {sf.fit.b:.3f}" if sf.fit else f"not fitted ({sf.note})"),
            fontsize=9,
        )
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- page


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "curation": code_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


TABLE_FIRST = ["set", "kind", "k", "mode", "seed", "status", "subset_size", "samples_seen", "acc_id"]


def _cell_text(col: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if col.startswith(("acc", "er_")) or "recall" in col:
            return f"{100 * value:+.2f}" if col.startswith("er_") else f"{100 * value:.2f}"
        return f"{value:g}" if col in ("k", "seed") else f"{value:.1f}"
    return str(value)


def table_for_html(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Columns in reading order; accuracies, recalls and ERs in percent (points)."""
    cols = [c for c in TABLE_FIRST if c in table] + [c for c in table if c not in TABLE_FIRST and c != "cell"]
    rows = [[_cell_text(c, r[c]) for c in cols] for r in table[cols].to_dict("records")]
    return cols, rows


def render_html(context: dict[str, Any]) -> str:
    return template_env(autoescape=True).get_template("ablation.html.j2").render(**context)


def report_context(
    result: AblationResult, cfg: AblationConfig, results: Results, boot_level: float
) -> dict[str, Any]:
    table = results.table
    figures: list[dict[str, str]] = []
    fig = plot_threshold(table, cfg.modes)
    if fig is not None:
        figures.append({"id": "threshold", "title": "Accuracy against the top-k threshold", "png": _png(fig)})
    if results.robustness is not None:
        fig = plot_robustness(results.robustness, table, cfg.modes)
        figures.append({"id": "robustness", "title": "Effective robustness (logit axes)", "png": _png(fig)})
    fits = fit_scaling(table, cfg.power_law_offset) if "samples_seen" in table else []
    fig = plot_scaling(table, fits)
    if fig is not None:
        figures.append({"id": "scaling", "title": "Error against samples seen (power law)", "png": _png(fig)})
    columns, rows = table_for_html(table)
    fit_info = results.robustness.fits if results.robustness is not None else {}
    return {
        "name": cfg.name,
        "modes": list(cfg.modes),
        "out": str(result.out),
        "ci_level": f"{100 * boot_level:g}%",
        "counts": table["status"].value_counts().to_dict() if len(table) else {},
        "id_dataset": results.id_dataset,
        "shifts": results.shifts,
        "figures": figures,
        "fits": [
            {
                "metric": f.metric,
                "formula": f.fit.formula() if f.fit else "",
                "b": f"{f.fit.b:.4f}" if f.fit else "",
                "r2": f"{f.fit.r2:.3f}" if f.fit else "",
                "n": f.fit.n if f.fit else 0,
                "note": f.note,
            }
            for f in fits
        ],
        "baseline_fits": [
            {
                "shift": k,
                "slope": f"{v.slope:.3f}",
                "intercept": f"{v.intercept:.3f}",
                "n": v.n,
                "r2": f"{v.r2:.3f}",
                "id_range": f"{100 * v.id_range[0]:.1f}–{100 * v.id_range[1]:.1f}%" if v.id_range else "",
            }
            for k, v in fit_info.items()
        ],
        "baselines_resampled": results.robustness.baselines_resampled if results.robustness else False,
        "notes": results.notes,
        "headlines": [h["text"] for h in headline_records(table)],
        "failed": [{"cell": c.id, "error": c.error or ""} for c in result.failed],
        "columns": columns,
        "rows": rows,
        "config": yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
        "versions": versions(),
    }


def headline_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Every headline of the grid, in the order the report and ``results.json`` give them: top-k,
    the methods against their controls, the mixing experiment (each with its verdict and text)."""
    return (
        [
            {**asdict(h), "beats_full": h.beats_full, "beats_random": h.beats_random, "text": h.sentence()}
            for h in headlines(table)
        ]
        + [{**asdict(m), "helps": m.helps, "text": m.sentence()} for m in method_headlines(table)]
        + [{**asdict(m), "dilutes": m.dilutes, "text": m.sentence()} for m in mix_headlines(table)]
    )


def write_outputs(result: AblationResult, cfg: AblationConfig) -> Results:
    """``results.csv``, ``results.json`` and ``report.html`` under the ablation's output directory."""
    boot = load_eval_config(cfg.eval_config, cfg.eval_overrides).bootstrap.as_config()
    results = build_results(result.cells, boot)
    out = result.out
    atomic_write_text(out / "results.csv", results.table.to_csv(index=False))
    records = json.loads(results.table.to_json(orient="records"))
    atomic_write_json(
        out / "results.json",
        {
            "name": cfg.name,
            "id_dataset": results.id_dataset,
            "shifts": results.shifts,
            "notes": results.notes,
            "headlines": headline_records(results.table),
            "robustness": results.robustness.to_dict() if results.robustness is not None else None,
            "cells": records,
        },
    )
    atomic_write_text(out / "report.html", render_html(report_context(result, cfg, results, boot.level)))
    log.info("results: %s, report: %s", out / "results.csv", out / "report.html")
    return results
