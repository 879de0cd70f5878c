"""Effective robustness (Taori et al. 2020; Miller et al. 2021), with bootstrap confidence intervals.

(Over 400 lines: the fit, the accuracy tables and the bootstrap share the report's types and read as
one method.)

Baseline models (e.g. supervised models trained on the in-distribution data) lie on a line when
accuracies are logit-transformed: ``logit(acc_shift) = a * logit(acc_id) + b`` (least squares over
the baselines). A model's effective robustness on a shift is how far above that line it lies,
in accuracy units: ``ER = acc_shift - sigmoid(a * logit(acc_id) + b)``. A model on the line has
ER 0; CLIP models famously lie well above it.

Reported per shift, as the mean of the per-shift ERs, and for the average shift accuracy (its own
line fitted on the baselines' average shift accuracy, the way the robustness papers plot it).
Confidence intervals: percentile bootstrap. Each replicate resamples the model's in-distribution and
every shift set over test samples (independently, seeded) and, when there are at least three
baseline models, also resamples the baseline models with replacement and refits the line (a case
bootstrap; draws with fewer than two distinct in-distribution accuracies are redrawn). So the CI
states both the test-set noise of this model's ER and the uncertainty of the line it is measured
against; with two baselines the line is exact through them and is held fixed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from upath import UPath

from curation.core import storage
from trainer.errors import EvalInputError


class RobustnessInputError(EvalInputError):
    """Baselines or results that cannot support an effective-robustness fit; the message says why."""


# Accuracies of exactly 0 or 1 have infinite logits; clip them just inside (0, 1).
EPS = 1e-4
AVERAGE = "average"


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class LogitFit:
    """``logit(acc_shift) = slope * logit(acc_id) + intercept``, fitted on ``n`` baseline models."""

    slope: float
    intercept: float
    n: int
    r2: float
    id_range: tuple[float, float] | None = None  # the baselines' in-distribution accuracies, min and max

    def extrapolates(self, acc_id: float) -> bool:
        """Whether ``acc_id`` lies outside the baselines' range, where the line is an extrapolation."""
        return self.id_range is not None and not self.id_range[0] <= acc_id <= self.id_range[1]

    def predict(self, acc_id: np.ndarray | float) -> np.ndarray:
        """The shift accuracy a baseline model with this in-distribution accuracy would have."""
        return sigmoid(self.slope * logit(acc_id) + self.intercept)


def fit_logit_line(acc_id: Sequence[float] | np.ndarray, acc_shift: Sequence[float] | np.ndarray) -> LogitFit:
    """Ordinary least squares in logit space."""
    x, y = logit(acc_id), logit(acc_shift)
    if x.shape != y.shape or x.ndim != 1:
        raise RobustnessInputError("acc_id and acc_shift must be 1-d arrays of the same length")
    if len(x) < 2 or np.ptp(x) == 0:
        raise RobustnessInputError(
            f"fitting the baseline line needs at least two baseline models with different in-distribution "
            f"accuracies; got {len(x)}"
        )
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = float(1 - np.sum(resid**2) / total) if total > 0 else 1.0
    ids = np.asarray(acc_id, dtype=np.float64)
    return LogitFit(float(slope), float(intercept), len(x), r2, (float(ids.min()), float(ids.max())))


def effective_robustness(
    fit: LogitFit, acc_id: np.ndarray | float, acc_shift: np.ndarray | float
) -> np.ndarray:
    return np.asarray(acc_shift, dtype=np.float64) - fit.predict(acc_id)


def resample_means(
    correct: np.ndarray, n_boot: int, rng: np.random.Generator, block: int = 4_000_000
) -> np.ndarray:
    """Bootstrap replicates of ``correct.mean()`` (resampling samples with replacement), memory-bounded."""
    values = np.asarray(correct, dtype=np.float64)
    n = len(values)
    if n == 0:
        raise RobustnessInputError("cannot bootstrap an empty test set")
    per_chunk = max(1, block // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def percentile_ci(replicates: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


@dataclass(frozen=True)
class BootstrapConfig:
    samples: int = 1000
    seed: int = 0
    level: float = 0.95


# ---------------------------------------------------------------- accuracy tables


TABLE_COLUMNS = ["model", "dataset", "acc1", "role", "samples"]


def records_to_table(records: Iterable[dict[str, Any]], base: Path | UPath | None = None) -> pd.DataFrame:
    """Classification records (ours or CLIP_benchmark's) -> rows (model, dataset, acc1, role, samples)."""
    rows = []
    for rec in records:
        if rec.get("task", "zeroshot_classification") != "zeroshot_classification":
            continue
        metrics = rec.get("metrics", rec)
        acc = metrics.get("acc1", metrics.get("acc"))
        model = rec.get("label") or _model_label(rec)
        if acc is None or model is None or "dataset" not in rec:
            raise RobustnessInputError(f"record lacks model, dataset or acc1: {json.dumps(rec)[:200]}")
        samples = rec.get("samples")
        if samples and base is not None:
            samples = str(base / samples)
        rows.append(
            {
                "model": model,
                "dataset": _dataset_name(rec["dataset"]),
                "acc1": float(acc),
                "role": rec.get("role"),
                "samples": samples,
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _model_label(rec: dict[str, Any]) -> str | None:
    model, pretrained = rec.get("model"), rec.get("pretrained")
    return f"{model}/{pretrained}" if model and pretrained else model


def _dataset_name(name: str) -> str:
    """CLIP_benchmark names webdatasets ``wds/imagenet1k``; match on the last part."""
    return name.split("/")[-1]


def load_accuracy_table(paths: Iterable[str | Path | UPath]) -> pd.DataFrame:
    """Read results JSONL (ours), CLIP_benchmark JSON, JSON lists or CSV (model, dataset, acc1|acc).

    Accuracies are fractions in [0, 1]; a table in percent is an error, not a silent rescale. Paths
    may be URLs.
    """
    frames = []
    for path in map(storage.location, paths):
        if not path.exists():
            raise RobustnessInputError(f"accuracy table not found: {path}")
        if path.suffix == ".csv":
            df = pd.read_csv(io.StringIO(storage.read_text(path)) if storage.is_remote(path) else path)
            if "acc1" not in df.columns and "acc" in df.columns:
                df = df.rename(columns={"acc": "acc1"})
            missing = {"model", "dataset", "acc1"} - set(df.columns)
            if missing:
                raise RobustnessInputError(
                    f"{path}: CSV needs columns model, dataset, acc1 (missing {sorted(missing)})"
                )
            df = df.assign(dataset=df["dataset"].map(_dataset_name))
            df = df.reindex(columns=TABLE_COLUMNS)
        elif path.suffix == ".jsonl":
            lines = [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
            df = records_to_table(lines, base=path.parent)
        elif path.suffix == ".json":
            data = json.loads(storage.read_text(path))
            df = records_to_table(data if isinstance(data, list) else [data], base=path.parent)
        else:
            raise RobustnessInputError(f"{path}: unknown table format (use .jsonl, .json or .csv)")
        frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE_COLUMNS)
    bad = table[(table["acc1"] < 0) | (table["acc1"] > 1)]
    if len(bad):
        raise RobustnessInputError(
            f"accuracies must be fractions in [0, 1] (percent?): {bad.head(3).to_dict('records')}"
        )
    dupes = table.duplicated(["model", "dataset"], keep=False)
    if dupes.any():
        raise RobustnessInputError(
            f"duplicate (model, dataset) rows: {table[dupes].head(4).to_dict('records')}"
        )
    return table


# ---------------------------------------------------------------- the report


@dataclass
class Point:
    """One model on one shift (or the average of shifts)."""

    model: str
    shift: str
    acc_id: float
    acc_shift: float
    er: float | None = None
    ci: tuple[float, float] | None = None
    extrapolated: bool = False  # acc_id outside the baselines' range


@dataclass
class RobustnessReport:
    id_dataset: str
    shifts: list[str]
    fits: dict[str, LogitFit]  # per shift, plus AVERAGE
    baselines: list[Point]
    models: list[Point]  # per model: one per shift, one AVERAGE, and the mean-of-ERs row
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    baselines_resampled: bool = False  # whether the CIs refit the line on resampled baseline models

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_dataset": self.id_dataset,
            "shifts": self.shifts,
            "formula": "ER = acc_shift - sigmoid(slope * logit(acc_id) + intercept)",
            "fits": {k: asdict(v) for k, v in self.fits.items()},
            "baselines": [asdict(p) for p in self.baselines],
            "models": [asdict(p) for p in self.models],
            "bootstrap": asdict(self.bootstrap),
            "baselines_resampled": self.baselines_resampled,
        }

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for p in self.models:
            lo, hi = p.ci if p.ci else (None, None)
            rows.append(
                {
                    "model": p.model,
                    "shift": p.shift,
                    "acc_id": p.acc_id,
                    "acc_shift": p.acc_shift,
                    "effective_robustness": p.er,
                    "ci_low": lo,
                    "ci_high": hi,
                    "extrapolated": p.extrapolated,
                }
            )
        return pd.DataFrame(rows)


MEAN_OF_SHIFTS = "mean_of_shifts"


def infer_roles(table: pd.DataFrame) -> tuple[str, list[str]]:
    """The in-distribution set and the shifts, from the ``role`` column of evaluated results."""
    roles = table.dropna(subset=["role"]).drop_duplicates("dataset").set_index("dataset")["role"]
    ids = sorted(roles[roles == "in_distribution"].index)
    shifts = sorted(roles[roles == "shift"].index)
    if len(ids) != 1 or not shifts:
        raise RobustnessInputError(
            f"cannot tell the in-distribution set and the shifts from the results (in_distribution: {ids}, "
            f"shifts: {shifts}); pass --id and --shift"
        )
    return ids[0], shifts


def _pivot(table: pd.DataFrame, datasets: Sequence[str]) -> pd.DataFrame:
    wide = table.pivot(index="model", columns="dataset", values="acc1")
    return wide.reindex(columns=list(datasets))


def compute_report(
    evaluated: pd.DataFrame,
    baseline: pd.DataFrame,
    id_dataset: str,
    shifts: Sequence[str],
    bootstrap: BootstrapConfig | None = None,
) -> RobustnessReport:
    """Fit baseline lines per shift (and for the average shift), then ER and CIs per evaluated model."""
    boot = bootstrap or BootstrapConfig()
    datasets = [id_dataset, *shifts]
    absent = [d for d in datasets if d not in set(baseline["dataset"])]
    if absent:
        raise RobustnessInputError(
            f"the baseline table has no rows for {absent} (it has {sorted(set(baseline['dataset']))})"
        )
    base = _pivot(baseline, datasets)
    fits: dict[str, LogitFit] = {}
    baselines: list[Point] = []
    for shift in shifts:
        rows = base[[id_dataset, shift]].dropna()
        try:
            fits[shift] = fit_logit_line(rows[id_dataset].to_numpy(), rows[shift].to_numpy())
        except RobustnessInputError as exc:
            raise RobustnessInputError(f"baseline fit for {shift!r} vs {id_dataset!r}: {exc}") from exc
        baselines += [Point(str(m), shift, r[id_dataset], r[shift]) for m, r in rows.iterrows()]
    complete = base.dropna()
    avg = complete[list(shifts)].mean(axis=1)
    try:
        fits[AVERAGE] = fit_logit_line(complete[id_dataset].to_numpy(), avg.to_numpy())
    except RobustnessInputError as exc:
        raise RobustnessInputError(
            f"baseline fit for the average over shifts (needs all shifts): {exc}"
        ) from exc
    baselines += [Point(str(m), AVERAGE, complete.loc[m, id_dataset], avg[m]) for m in complete.index]

    lines = _line_replicates(base, complete, id_dataset, list(shifts), boot)
    models: list[Point] = []
    for model, group in evaluated.groupby("model", sort=True):
        models += _model_points(
            str(model), group.set_index("dataset"), id_dataset, list(shifts), fits, boot, lines
        )
    return RobustnessReport(id_dataset, list(shifts), fits, baselines, models, boot, lines is not None)


def _model_points(
    model: str,
    rows: pd.DataFrame,
    id_dataset: str,
    shifts: list[str],
    fits: dict[str, LogitFit],
    boot: BootstrapConfig,
    lines: LineReplicates | None = None,
) -> list[Point]:
    missing = [d for d in [id_dataset, *shifts] if d not in rows.index]
    if missing:
        raise RobustnessInputError(f"model {model!r} has no results for {missing}")
    acc_id = float(rows.loc[id_dataset, "acc1"])
    acc = np.array([float(rows.loc[s, "acc1"]) for s in shifts])
    ers = np.array(
        [effective_robustness(fits[s], acc_id, a) for s, a in zip(shifts, acc, strict=True)], dtype=np.float64
    )
    avg_er = float(effective_robustness(fits[AVERAGE], acc_id, acc.mean()))
    cis = _bootstrap_cis(rows, id_dataset, shifts, fits, boot, lines)
    points = [
        Point(model, s, acc_id, float(a), float(e), cis.get(s), fits[s].extrapolates(acc_id))
        for s, a, e in zip(shifts, acc, ers, strict=True)
    ]
    points.append(
        Point(
            model,
            AVERAGE,
            acc_id,
            float(acc.mean()),
            avg_er,
            cis.get(AVERAGE),
            fits[AVERAGE].extrapolates(acc_id),
        )
    )
    points.append(
        Point(
            model,
            MEAN_OF_SHIFTS,
            acc_id,
            float(acc.mean()),
            float(ers.mean()),
            cis.get(MEAN_OF_SHIFTS),
            any(fits[s].extrapolates(acc_id) for s in shifts),
        )
    )
    return points


def load_correct(path: str | Path | UPath) -> np.ndarray:
    """The per-sample ``correct`` array of a results ``.npz`` (a path or a URL)."""
    if storage.is_remote(path):
        with np.load(io.BytesIO(storage.read_bytes(path))) as data:
            return data["correct"].astype(bool)
    with np.load(path) as data:
        return data["correct"].astype(bool)


# per shift (and AVERAGE): (slopes, intercepts), one per bootstrap replicate
LineReplicates = dict[str, tuple[np.ndarray, np.ndarray]]
MIN_BASELINES_TO_RESAMPLE = 3


def _line_replicates(
    base: pd.DataFrame, complete: pd.DataFrame, id_dataset: str, shifts: list[str], boot: BootstrapConfig
) -> LineReplicates | None:
    """Baseline lines refitted on baseline models drawn with replacement (None: too few to resample)."""
    if boot.samples <= 0:
        return None
    rng = np.random.default_rng([boot.seed, 1])  # its own stream: the test-sample draws stay as they were
    out: LineReplicates = {}
    targets = [(s, base[[id_dataset, s]].dropna(), None) for s in shifts]
    targets.append((AVERAGE, complete, complete[shifts].mean(axis=1)))
    for shift, rows, avg in targets:
        x = logit(rows[id_dataset].to_numpy(np.float64))
        y = logit((avg if avg is not None else rows[shift]).to_numpy(np.float64))
        if len(x) < MIN_BASELINES_TO_RESAMPLE:
            return None
        slopes, intercepts = np.empty(boot.samples), np.empty(boot.samples)
        for b in range(boot.samples):
            for _ in range(100):
                idx = rng.integers(0, len(x), len(x))
                if np.ptp(x[idx]) > 0:
                    break
            slopes[b], intercepts[b] = np.polyfit(x[idx], y[idx], 1)
        out[shift] = (slopes, intercepts)
    return out


def _predict(
    fits: dict[str, LogitFit], lines: LineReplicates | None, shift: str, acc_id: np.ndarray
) -> np.ndarray:
    if lines is None:
        return fits[shift].predict(acc_id)
    slopes, intercepts = lines[shift]
    return sigmoid(slopes * logit(acc_id) + intercepts)


def _bootstrap_cis(
    rows: pd.DataFrame,
    id_dataset: str,
    shifts: list[str],
    fits: dict[str, LogitFit],
    boot: BootstrapConfig,
    lines: LineReplicates | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of each ER, the average-shift ER and the mean ER, if per-sample results exist."""
    files = rows["samples"].reindex([id_dataset, *shifts])
    if files.isna().any() or boot.samples <= 0:
        return {}
    rng = np.random.default_rng(boot.seed)
    acc_id = resample_means(load_correct(files[id_dataset]), boot.samples, rng)
    acc = np.stack([resample_means(load_correct(files[s]), boot.samples, rng) for s in shifts], axis=1)
    ers = np.stack([acc[:, i] - _predict(fits, lines, s, acc_id) for i, s in enumerate(shifts)], axis=1)
    cis = {s: percentile_ci(ers[:, i], boot.level) for i, s in enumerate(shifts)}
    cis[AVERAGE] = percentile_ci(acc.mean(axis=1) - _predict(fits, lines, AVERAGE, acc_id), boot.level)
    cis[MEAN_OF_SHIFTS] = percentile_ci(ers.mean(axis=1), boot.level)
    return cis
