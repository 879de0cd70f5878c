"""From cell records to the ablation's results table: accuracies with CIs, ER against the baselines.

One row per cell. Accuracy CIs are the evaluator's percentile bootstrap over test samples; the mean
shift accuracy's CI resamples every shift set independently and averages (same settings). Effective
robustness comes from :mod:`trainer.robustness`: the baseline line is fitted on the supervised
baseline cells (logit space), and every finished cell, baselines included, is placed against it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from upath import UPath

from curation.core import storage
from trainer.errors import EvalInputError
from trainer.robustness import (
    MEAN_OF_SHIFTS,
    BootstrapConfig,
    RobustnessReport,
    compute_report,
    infer_roles,
    load_correct,
    percentile_ci,
    records_to_table,
    resample_means,
)
from workflows.ablation_spec import CellRecord, named_control_name

log = logging.getLogger(__name__)

RECALL_KEYS = ("image_retrieval_recall@1", "text_retrieval_recall@1")
ID_COLUMNS = ["cell", "set", "kind", "k", "mode", "seed", "status", "subset_size", "samples_seen"]


@dataclass
class Results:
    table: pd.DataFrame
    id_dataset: str | None
    shifts: list[str]
    robustness: RobustnessReport | None
    notes: list[str]  # what could not be computed and why (shown in the report)


def finished(cells: Sequence[CellRecord]) -> list[CellRecord]:
    return [c for c in cells if c.status == "finished" and c.records]


def accuracy_table(cells: Sequence[CellRecord]) -> pd.DataFrame:
    """(model = cell id, dataset, acc1, role, samples) over every finished cell's classification records."""
    frames = [records_to_table(c.records, base=storage.location(c.eval_dir or ".")) for c in finished(cells)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _classification(rec: CellRecord) -> dict[str, dict[str, Any]]:
    return {
        r["dataset"]: r
        for r in rec.records
        if r.get("task") == "zeroshot_classification" and r.get("role") in ("in_distribution", "shift")
    }


def mean_shift_ci(files: Sequence[str], boot: BootstrapConfig) -> tuple[float, float] | None:
    """Percentile CI of the mean over shift sets, each set resampled on its own."""
    if boot.samples <= 0 or not files:
        return None
    rng = np.random.default_rng(boot.seed)
    reps = np.stack([resample_means(load_correct(f), boot.samples, rng) for f in files], axis=1)
    return percentile_ci(reps.mean(axis=1), boot.level)


def _accuracy_columns(
    rec: CellRecord, id_dataset: str | None, shifts: list[str], boot: BootstrapConfig
) -> dict[str, Any]:
    by_set = _classification(rec)
    row: dict[str, Any] = {}
    if id_dataset in by_set:
        r = by_set[id_dataset]
        row["acc_id"] = r["metrics"]["acc1"]
        row["acc_id_ci_low"], row["acc_id_ci_high"] = r.get("ci", {}).get("acc1", (None, None))
    present = [s for s in shifts if s in by_set]
    for s in present:
        row[f"acc_{s}"] = by_set[s]["metrics"]["acc1"]
    if present and len(present) == len(shifts):
        row["acc_shift_mean"] = float(np.mean([by_set[s]["metrics"]["acc1"] for s in shifts]))
        files = [str(storage.location(rec.eval_dir or ".") / by_set[s]["samples"]) for s in shifts]
        ci = mean_shift_ci(files, boot) if all(by_set[s].get("samples") for s in shifts) else None
        row["acc_shift_mean_ci_low"], row["acc_shift_mean_ci_high"] = ci or (None, None)
    for r in rec.records:
        if r.get("role") == "retrieval":
            for key in RECALL_KEYS:
                if key in r["metrics"]:
                    row[f"{r['dataset']}_{key}" if _many_retrieval(rec) else key] = r["metrics"][key]
    return row


def _many_retrieval(rec: CellRecord) -> bool:
    return len({r["dataset"] for r in rec.records if r.get("role") == "retrieval"}) > 1


def robustness(
    cells: Sequence[CellRecord],
    table: pd.DataFrame,
    id_dataset: str,
    shifts: list[str],
    boot: BootstrapConfig,
) -> RobustnessReport:
    """ER of every finished cell against the line fitted on the finished baseline cells."""
    baseline_ids = {c.id for c in finished(cells) if c.kind == "baseline"}
    baseline = table[table["model"].isin(baseline_ids)]
    return compute_report(table, baseline, id_dataset, shifts, boot)


def _er_columns(report: RobustnessReport, model: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for p in report.models:
        if p.model != model:
            continue
        if p.shift == MEAN_OF_SHIFTS:
            row["er_mean"] = p.er
            row["er_mean_ci_low"], row["er_mean_ci_high"] = p.ci or (None, None)
            row["er_extrapolated"] = p.extrapolated
        elif p.shift in report.shifts:
            row[f"er_{p.shift}"] = p.er
    return row


def build_results(cells: Sequence[CellRecord], boot: BootstrapConfig) -> Results:
    """The results table (one row per cell, failed ones included) and the ER report behind it."""
    notes: list[str] = []
    table = accuracy_table(cells)
    id_dataset: str | None = None
    shifts: list[str] = []
    report: RobustnessReport | None = None
    if len(table):
        try:
            id_dataset, shifts = infer_roles(table)
        except EvalInputError as exc:
            notes.append(f"no accuracy-vs-shift analysis: {exc}")
    if id_dataset is not None:
        try:
            report = robustness(cells, table, id_dataset, shifts, boot)
        except EvalInputError as exc:
            notes.append(f"effective robustness not computed: {exc}")
            log.warning("effective robustness not computed: %s", exc)
    rows = []
    for c in cells:
        row: dict[str, Any] = {
            "cell": c.id,
            "set": c.set,
            "kind": c.kind,
            "k": c.k,
            "mode": c.mode,
            "seed": c.seed,
            "status": c.status,
            "reused": c.reused,
            "subset_size": c.subset_size,
            "samples_seen": c.samples_seen,
        }
        if c.records:
            row.update(_accuracy_columns(c, id_dataset, shifts, boot))
            if report is not None:
                row.update(_er_columns(report, c.id))
        row.update(wall_s=c.wall_s, train_s=c.train_s, eval_s=c.eval_s, error=c.error)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return Results(frame, id_dataset, shifts, report, notes)


@dataclass
class Headline:
    """The reference paper's claim on this grid: the best top-k beats the full pool and its random control."""

    mode: str
    best: str
    best_acc: float
    best_ci: tuple[float | None, float | None]
    full: str | None
    full_acc: float | None
    random: str | None
    random_acc: float | None

    @property
    def beats_full(self) -> bool | None:
        return None if self.full_acc is None else self.best_acc > self.full_acc

    @property
    def beats_random(self) -> bool | None:
        return None if self.random_acc is None else self.best_acc > self.random_acc

    def sentence(self) -> str:
        def vs(name: str | None, acc: float | None, beats: bool | None) -> str:
            if name is None or acc is None:
                return "no finished cell to compare with"
            return f"{'beats' if beats else 'does not beat'} {name} ({100 * acc:.1f}%)"

        lo, hi = self.best_ci
        ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
        return (
            f"{self.mode}: best top-k is {self.best} at {100 * self.best_acc:.1f}%{ci} in-distribution; it "
            f"{vs(self.full, self.full_acc, self.beats_full)} and "
            f"{vs(self.random, self.random_acc, self.beats_random)}"
        )


def set_means(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Per budget mode, one row per set of its finished cells (mean over seeds): kind, k, size, acc
    and its interval (lo, hi); nothing before any cell has finished."""
    if not len(table) or "acc_id" not in table:
        return
    done = table[(table["status"] == "finished") & table["acc_id"].notna()]
    if "subset_size" not in done:
        done = done.assign(subset_size=np.nan)
    for mode, rows in done.groupby("mode", sort=False):
        yield (
            str(mode),
            rows.groupby("set", sort=False).agg(
                kind=("kind", "first"),
                k=("k", "first"),
                size=("subset_size", "first"),
                acc=("acc_id", "mean"),
                lo=("acc_id_ci_low", "mean"),
                hi=("acc_id_ci_high", "mean"),
            ),
        )


def headlines(table: pd.DataFrame) -> list[Headline]:
    """Per budget mode (mean over seeds): best top-k below 100% against top-100 and its random control."""
    out: list[Headline] = []
    for mode, means in set_means(table):
        topk = means[(means["kind"] == "topk") & (means["k"] < 100)]
        if not len(topk):
            continue
        best = topk["acc"].idxmax()
        full = means[(means["kind"] == "topk") & (means["k"] >= 100)]
        rand = means[(means["kind"] == "random") & (means["k"] == means.loc[best, "k"])]

        def first(frame: pd.DataFrame) -> tuple[str | None, float | None]:
            return (str(frame.index[0]), float(frame["acc"].iloc[0])) if len(frame) else (None, None)

        full_name, full_acc = first(full)
        rand_name, rand_acc = first(rand)
        out.append(
            Headline(
                mode=mode,
                best=str(best),
                best_acc=float(means.loc[best, "acc"]),
                best_ci=_interval(means.loc[best]),
                full=full_name,
                full_acc=full_acc,
                random=rand_name,
                random_acc=rand_acc,
            )
        )
    return out


@dataclass
class MixHeadline:
    """The mixing experiment on this grid: does adding the noisy source lower effective robustness?"""

    clean: str
    mixed: str
    share: float  # the noisy fraction drawn
    acc_id: tuple[float, float]  # clean, mixed (mean over seeds)
    acc_shift: tuple[float | None, float | None]
    er: tuple[float | None, float | None]
    er_ci: tuple[tuple[float | None, float | None], tuple[float | None, float | None]]

    @property
    def dilutes(self) -> bool | None:
        """True: lower ER with disjoint intervals; False: ER not lower; None: lower, but within the noise."""
        er_clean, er_mixed = self.er
        if er_clean is None or er_mixed is None or er_mixed >= er_clean:
            return False if er_clean is not None and er_mixed is not None else None
        clean_low, mixed_high = self.er_ci[0][0], self.er_ci[1][1]
        return True if clean_low is not None and mixed_high is not None and mixed_high < clean_low else None

    def sentence(self) -> str:
        def er(i: int) -> str:
            value, (lo, hi) = self.er[i], self.er_ci[i]
            if value is None:
                return "ER not computed"
            ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None and hi is not None else ""
            return f"ER {100 * value:+.1f}{ci} pts"

        def acc(i: int) -> str:
            shift = self.acc_shift[i]
            return f"{100 * self.acc_id[i]:.1f}% ID" + (
                f", {100 * shift:.1f}% shift" if shift is not None else ""
            )

        verdict = (
            "no effective robustness to compare"
            if None in self.er
            else {
                True: "adding the noisy source dilutes robustness (lower ER, intervals apart)",
                None: "adding the noisy source lowers ER, but within the intervals (not resolved)",
                False: "adding the noisy source does not dilute robustness here (ER not lower)",
            }[self.dilutes]
        )
        return (
            f"mixing at equal samples seen: {self.clean} {acc(0)}, {er(0)}; {self.mixed} "
            f"({100 * self.share:.1f}% noisy) {acc(1)}, {er(1)}: {verdict}"
        )


def mix_headlines(table: pd.DataFrame) -> list[MixHeadline]:
    """Each mixed set against the clean sources alone (kind ``mix``, mean over seeds)."""
    if not len(table) or "acc_id" not in table:
        return []
    done = table[(table["status"] == "finished") & (table["kind"] == "mix") & table["acc_id"].notna()]
    wanted = ("acc_id", "acc_shift_mean", "er_mean", "er_mean_ci_low", "er_mean_ci_high", "subset_size")
    cols = [c for c in wanted if c in done]
    means = done.groupby("set", sort=False).agg(k=("k", "first"), **{c: (c, "mean") for c in cols})
    clean = means[means["k"] == 0]
    if not len(clean):
        return []
    c = clean.iloc[0]

    def get(row: pd.Series, col: str) -> float | None:
        return None if col not in row or pd.isna(row[col]) else float(row[col])

    out = []
    for name, m in means[means["k"] > 0].iterrows():
        # the share drawn: a mixed set is every clean sample plus the noisy ones (a short noisy source
        # is capped, so this can be below the share asked, k)
        sizes = get(c, "subset_size"), get(m, "subset_size")
        drawn = 1 - sizes[0] / sizes[1] if sizes[0] and sizes[1] else float(m["k"]) / 100
        out.append(
            MixHeadline(
                clean=str(clean.index[0]),
                mixed=str(name),
                share=round(drawn, 4),
                acc_id=(float(c["acc_id"]), float(m["acc_id"])),
                acc_shift=(get(c, "acc_shift_mean"), get(m, "acc_shift_mean")),
                er=(get(c, "er_mean"), get(m, "er_mean")),
                er_ci=(
                    (get(c, "er_mean_ci_low"), get(c, "er_mean_ci_high")),
                    (get(m, "er_mean_ci_low"), get(m, "er_mean_ci_high")),
                ),
            )
        )
    return out


@dataclass
class MethodHeadline:
    """A curation method made elsewhere (a named set) against a seeded random set of its own size."""

    mode: str
    method: str
    control: str
    acc_id: tuple[float, float]  # method, control (mean over seeds)
    ci: tuple[tuple[float | None, float | None], tuple[float | None, float | None]]

    @property
    def helps(self) -> bool | None:
        """True: higher with intervals apart; False: not higher; None: higher, within the intervals."""
        if self.acc_id[0] <= self.acc_id[1]:
            return False
        low, high = self.ci[0][0], self.ci[1][1]  # the method's lower bound, the control's upper one
        return True if low is not None and high is not None and low > high else None

    def sentence(self) -> str:
        def acc(i: int) -> str:
            lo, hi = self.ci[i]
            ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
            return f"{100 * self.acc_id[i]:.1f}%{ci}"

        verdict = {
            True: "it helps (intervals apart)",
            None: "higher, but within the intervals (not resolved)",
            False: "it does not help here (not above chance at its size)",
        }[self.helps]
        return (
            f"{self.mode}: {self.method} {acc(0)} in-distribution against its random control "
            f"{self.control} {acc(1)}: {verdict}"
        )


def _interval(row: pd.Series) -> tuple[float | None, float | None]:
    lo, hi = row["lo"], row["hi"]
    return (None if pd.isna(lo) else float(lo), None if pd.isna(hi) else float(hi))


def method_headlines(table: pd.DataFrame) -> list[MethodHeadline]:
    """Each named set against its random control, per mode: ``random_<name>`` (``named_controls``),
    else a random set of exactly its size (a top-k control, drawn from the same candidates)."""
    out: list[MethodHeadline] = []
    for mode, means in set_means(table):
        randoms = means[means["kind"] == "random"]
        for name in means.index[means["kind"] == "named"]:
            own = named_control_name(str(name))
            same_size = randoms.index[randoms["size"] == means.loc[name, "size"]]
            control = own if own in randoms.index else (str(same_size[0]) if len(same_size) else None)
            if control is None:
                continue
            pair = means.loc[[name, control]]
            out.append(
                MethodHeadline(
                    mode=mode,
                    method=str(name),
                    control=control,
                    acc_id=(float(pair["acc"].iloc[0]), float(pair["acc"].iloc[1])),
                    ci=(_interval(pair.iloc[0]), _interval(pair.iloc[1])),
                )
            )
    return out


def read_headlines(out: str | Path | UPath) -> list[str]:
    """The headline sentences an ablation wrote to ``OUT/results.json`` (none before it has run)."""
    summary = storage.location(out) / "results.json"
    if not summary.exists():
        return []
    return [h["text"] for h in json.loads(storage.read_text(summary)).get("headlines", [])]
