"""Effective robustness: the logit-space baseline fit, ER, bootstrap CIs, accuracy tables and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from scipy.special import expit
from scipy.special import logit as scipy_logit
from typer.testing import CliRunner

from pipelines.app import app
from trainer.plots import BASELINE_COLOR, FIT_COLOR, IDENTITY_COLOR, MODEL_COLORS, plot_effective_robustness
from trainer.robustness import (
    AVERAGE,
    MEAN_OF_SHIFTS,
    BootstrapConfig,
    LogitFit,
    RobustnessInputError,
    compute_report,
    effective_robustness,
    fit_logit_line,
    infer_roles,
    load_accuracy_table,
    resample_means,
)


def test_hand_worked_example() -> None:
    # Baselines at logit(acc_id) = -1, 0, 1 and logit(acc_shift) = -2, -1.5, -0.4.
    # Least squares: mean x = 0, mean y = -1.3, Sxy = (-1)(-0.7) + (1)(0.9) = 1.6, Sxx = 2
    # -> slope 0.8, intercept -1.3.
    acc_id = expit([-1.0, 0.0, 1.0])
    acc_shift = expit([-2.0, -1.5, -0.4])
    fit = fit_logit_line(acc_id, acc_shift)
    assert fit.slope == pytest.approx(0.8, abs=1e-12)
    assert fit.intercept == pytest.approx(-1.3, abs=1e-12)
    # A model with logit(acc_id) = 0.5 is expected at logit 0.8 * 0.5 - 1.3 = -0.9 on the shift,
    # i.e. sigmoid(-0.9) = 1 / (1 + e^0.9) = 0.28905049737; it scores 0.35, so ER = 0.06094950263.
    er = float(effective_robustness(fit, expit(0.5), 0.35))
    assert er == pytest.approx(0.35 - 1 / (1 + math.exp(0.9)), abs=1e-12)
    assert er == pytest.approx(0.0609495026, abs=1e-9)


def test_fit_and_er_match_scipy_on_noisy_points() -> None:
    rng = np.random.default_rng(3)
    acc_id = rng.uniform(0.2, 0.9, size=12)
    acc_shift = expit(0.75 * scipy_logit(acc_id) - 0.6 + rng.normal(0, 0.15, size=12))
    fit = fit_logit_line(acc_id, acc_shift)
    ref = stats.linregress(scipy_logit(acc_id), scipy_logit(acc_shift))
    assert fit.slope == pytest.approx(ref.slope, abs=1e-9)
    assert fit.intercept == pytest.approx(ref.intercept, abs=1e-9)
    assert fit.r2 == pytest.approx(ref.rvalue**2, abs=1e-9)
    slope, intercept = np.polyfit(scipy_logit(acc_id), scipy_logit(acc_shift), 1)
    models_id, models_shift = np.array([0.55, 0.8]), np.array([0.5, 0.52])
    expected = models_shift - expit(slope * scipy_logit(models_id) + intercept)
    np.testing.assert_allclose(
        effective_robustness(fit, models_id, models_shift), expected, atol=1e-9, rtol=0
    )


def test_point_on_the_line_has_zero_er_and_above_is_positive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        fit = LogitFit(slope=float(rng.uniform(0.3, 1.5)), intercept=float(rng.uniform(-2, 1)), n=3, r2=1.0)
        acc_id = rng.uniform(0.05, 0.95, size=5)
        on_line = fit.predict(acc_id)
        np.testing.assert_allclose(effective_robustness(fit, acc_id, on_line), 0.0, atol=1e-12)
        above = np.minimum(on_line + 0.01, 0.999)
        assert (effective_robustness(fit, acc_id, above) > 0).all()


def test_fit_needs_two_distinct_baselines() -> None:
    with pytest.raises(RobustnessInputError, match="at least two baseline models"):
        fit_logit_line([0.5], [0.4])
    with pytest.raises(RobustnessInputError, match="at least two baseline models"):
        fit_logit_line([0.5, 0.5], [0.4, 0.3])


def test_bootstrap_replicates_are_seeded_and_binomial() -> None:
    correct = np.zeros(400, dtype=bool)
    correct[:120] = True  # acc 0.3
    a = resample_means(correct, 2000, np.random.default_rng(7))
    b = resample_means(correct, 2000, np.random.default_rng(7), block=1000)  # chunking must not matter
    np.testing.assert_array_equal(a, b)
    assert a.mean() == pytest.approx(0.3, abs=0.005)
    assert a.std() == pytest.approx(math.sqrt(0.3 * 0.7 / 400), rel=0.1)


# ------------------------------------------------------------------ reports from tables


BASELINES = pd.DataFrame(
    [
        ("b1", "id", 0.30), ("b1", "sketch", 0.12), ("b1", "style", 0.20),
        ("b2", "id", 0.50), ("b2", "sketch", 0.25), ("b2", "style", 0.35),
        ("b3", "id", 0.70), ("b3", "sketch", 0.45), ("b3", "style", 0.55),
        ("b4", "id", 0.80), ("b4", "sketch", 0.58), ("b4", "style", 0.66),
    ],
    columns=["model", "dataset", "acc1"],
)  # fmt: skip


def _write_samples(path: Path, acc: float, n: int) -> str:
    correct = np.zeros(n, dtype=bool)
    correct[: round(acc * n)] = True
    np.savez(path, correct=np.random.default_rng(0).permutation(correct))
    return path.name


def _results(tmp_path: Path, label: str, accs: dict[str, float], n: int = 500) -> Path:
    roles = {"id": "in_distribution", "sketch": "shift", "style": "shift"}
    lines = []
    for dataset, acc in accs.items():
        samples = _write_samples(tmp_path / f"{label}.{dataset}.npz", acc, n)
        lines.append({"dataset": dataset, "model": "tiny-vit", "pretrained": "x.pt", "label": label,
                      "task": "zeroshot_classification", "role": roles[dataset], "n": n,
                      "metrics": {"acc1": acc}, "samples": samples})  # fmt: skip
    path = tmp_path / f"{label}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_report_er_and_cis(tmp_path: Path) -> None:
    evaluated = load_accuracy_table([_results(tmp_path, "clip", {"id": 0.4, "sketch": 0.36, "style": 0.38})])
    assert infer_roles(evaluated) == ("id", ["sketch", "style"])
    boot = BootstrapConfig(samples=500, seed=1)
    report = compute_report(evaluated, BASELINES, "id", ["sketch", "style"], boot)
    points = {p.shift: p for p in report.models}
    for shift in ("sketch", "style"):
        rows = BASELINES.pivot(index="model", columns="dataset", values="acc1")
        ref = stats.linregress(scipy_logit(rows["id"]), scipy_logit(rows[shift]))
        expected = points[shift].acc_shift - expit(ref.slope * scipy_logit(0.4) + ref.intercept)
        assert points[shift].er == pytest.approx(expected, abs=1e-9)
        lo, hi = points[shift].ci
        assert lo < points[shift].er < hi
    assert points[MEAN_OF_SHIFTS].er == pytest.approx(
        (points["sketch"].er + points["style"].er) / 2, abs=1e-12
    )
    assert points[AVERAGE].acc_shift == pytest.approx(0.37)
    assert points[AVERAGE].er > 0  # this "CLIP" lies well above the baselines
    assert not any(p.extrapolated for p in report.models)  # 0.4 lies within the baselines' 0.3..0.8
    low = load_accuracy_table([_results(tmp_path, "low", {"id": 0.2, "sketch": 0.15, "style": 0.18})])
    low_points = compute_report(low, BASELINES, "id", ["sketch", "style"], boot).models
    assert all(p.extrapolated for p in low_points)
    again = compute_report(evaluated, BASELINES, "id", ["sketch", "style"], boot)
    assert [p.ci for p in again.models] == [p.ci for p in report.models]
    # more test samples -> narrower interval
    big = load_accuracy_table([_results(tmp_path, "big", {"id": 0.4, "sketch": 0.36, "style": 0.38}, n=5000)])
    big_ci = {p.shift: p.ci for p in compute_report(big, BASELINES, "id", ["sketch", "style"], boot).models}
    width = {s: points[s].ci[1] - points[s].ci[0] for s in ("sketch", "style")}
    assert all(big_ci[s][1] - big_ci[s][0] < 0.5 * width[s] for s in width)


def test_missing_baseline_data_is_a_clear_error(tmp_path: Path) -> None:
    evaluated = load_accuracy_table([_results(tmp_path, "m", {"id": 0.4, "sketch": 0.3, "style": 0.3})])
    only_one = BASELINES[BASELINES.model == "b1"]
    with pytest.raises(RobustnessInputError, match="baseline fit for 'sketch'"):
        compute_report(evaluated, only_one, "id", ["sketch", "style"])
    with pytest.raises(RobustnessInputError, match=r"baseline table has no rows for \['missing'\]"):
        compute_report(evaluated, BASELINES, "id", ["sketch", "missing"])
    partial = load_accuracy_table([_results(tmp_path, "p", {"id": 0.4, "sketch": 0.3})])
    with pytest.raises(RobustnessInputError, match=r"model 'p' has no results for \['style'\]"):
        compute_report(partial, BASELINES, "id", ["sketch", "style"])


def test_accuracy_tables_csv_jsonl_and_clip_benchmark(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("model,dataset,acc\nr50,wds/imagenet1k,0.76\nr50,imagenetv2,0.64\n")
    cb = tmp_path / "cb.json"
    record = {"dataset": "wds/imagenet1k", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    record |= {"task": "zeroshot_classification", "metrics": {"acc1": 0.66, "acc5": 0.89}}
    cb.write_text(json.dumps(record))  # CLIP_benchmark's output format
    table = load_accuracy_table([csv, cb])
    assert set(zip(table.model, table.dataset, table.acc1, strict=True)) == {
        ("r50", "imagenet1k", 0.76),
        ("r50", "imagenetv2", 0.64),
        ("ViT-B-32/laion2b_s34b_b79k", "imagenet1k", 0.66),
    }
    pct = tmp_path / "pct.csv"
    pct.write_text("model,dataset,acc1\nr50,imagenet1k,76.1\n")
    with pytest.raises(RobustnessInputError, match="percent"):
        load_accuracy_table([pct])
    with pytest.raises(RobustnessInputError, match="duplicate"):
        load_accuracy_table([csv, csv])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,acc1\nr50,0.7\n")
    with pytest.raises(RobustnessInputError, match="needs columns"):
        load_accuracy_table([bad])


def _on_line(models: dict[str, float], noise: dict[str, float]) -> pd.DataFrame:
    """Baselines on logit(shift) = logit(id) - 1 (plus ``noise`` in logit units), for both shifts."""
    rows = []
    for m, acc in models.items():
        shift = float(expit(scipy_logit(acc) - 1 + noise.get(m, 0.0)))
        rows += [(m, "id", acc), (m, "sketch", shift), (m, "style", shift)]
    return pd.DataFrame(rows, columns=["model", "dataset", "acc1"])


def test_er_ci_resamples_the_baseline_models(tmp_path: Path) -> None:
    evaluated = load_accuracy_table([_results(tmp_path, "clip", {"id": 0.4, "sketch": 0.36, "style": 0.38})])
    boot = BootstrapConfig(samples=400, seed=3)
    accs = {"b1": 0.1, "b2": 0.2, "b3": 0.3, "b4": 0.45, "b5": 0.6}

    def width(baselines: pd.DataFrame) -> tuple[float, bool]:
        report = compute_report(evaluated, baselines, "id", ["sketch", "style"], boot)
        ci = next(p.ci for p in report.models if p.shift == "sketch")
        return ci[1] - ci[0], report.baselines_resampled

    exact, resampled = width(_on_line(accs, {}))  # every resampled line is the same line
    noisy, _ = width(_on_line(accs, {"b1": 0.3, "b2": -0.3, "b3": 0.25, "b4": -0.2, "b5": 0.3}))
    assert resampled and noisy > 1.2 * exact
    two = _on_line({"b1": 0.1, "b5": 0.6}, {})
    assert width(two) == pytest.approx((exact, False))  # two points: the line is held fixed


def test_robustness_cli(tmp_path: Path) -> None:
    results = [_results(tmp_path, "clip-a", {"id": 0.4, "sketch": 0.36, "style": 0.38}),
               _results(tmp_path, "clip-b", {"id": 0.6, "sketch": 0.5, "style": 0.52})]  # fmt: skip
    baseline = tmp_path / "baselines.csv"
    BASELINES.to_csv(baseline, index=False)
    out = tmp_path / "er"
    args = [
        "robustness",
        *map(str, results),
        "--baseline",
        str(baseline),
        "--out",
        str(out),
        "-s",
        "svg=true",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "robustness.json").read_text())
    assert {p["model"] for p in report["models"]} == {"clip-a", "clip-b"}
    assert set(report["fits"]) == {"sketch", "style", AVERAGE}
    frame = pd.read_csv(out / "robustness.csv")
    assert len(frame) == 2 * 4 and frame["ci_low"].notna().all()
    assert (out / "effective_robustness.png").exists() and (out / "effective_robustness.svg").exists()
    missing = CliRunner().invoke(app, ["robustness", str(results[0]), "--out", str(out)])
    assert missing.exit_code != 0


def test_robustness_cli_takes_several_baseline_files(tmp_path: Path) -> None:
    results = _results(tmp_path, "clip-a", {"id": 0.4, "sketch": 0.36, "style": 0.38})
    models = sorted(BASELINES["model"].unique())
    files = []
    for i, model in enumerate(models):
        files.append(tmp_path / f"baseline{i}.csv")
        BASELINES[BASELINES["model"] == model].to_csv(files[-1], index=False)
    out = tmp_path / "er"
    args = ["robustness", str(results), "--baseline", *map(str, files), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "robustness.json").read_text())
    assert {p["model"] for p in report["models"]} == {"clip-a"}  # the baselines did not become results
    assert report["fits"]["sketch"]["n"] == len(models) > 2


# ------------------------------------------------------------------ the plot


def _count(pixels: np.ndarray, hex_color: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels[..., :3].astype(int) - rgb).max(axis=-1) <= tol).sum())


def test_plot_draws_points_and_lines(tmp_path: Path) -> None:
    evaluated = pd.concat(
        [load_accuracy_table([_results(tmp_path, "clip-a", {"id": 0.4, "sketch": 0.36, "style": 0.38})]),
         load_accuracy_table([_results(tmp_path, "clip-b", {"id": 0.6, "sketch": 0.5, "style": 0.52})])]
    )  # fmt: skip
    report = compute_report(evaluated, BASELINES, "id", ["sketch", "style"], BootstrapConfig(samples=50))
    png = tmp_path / "er.png"
    fig = plot_effective_robustness(report, png)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert _count(pixels, FIT_COLOR) > 500  # three fitted lines
    assert _count(pixels, IDENTITY_COLOR) > 300  # three dashed y = x lines
    assert _count(pixels, BASELINE_COLOR) > 200  # 4 baseline points per panel
    assert _count(pixels, MODEL_COLORS[0]) > 100 and _count(pixels, MODEL_COLORS[1]) > 100
    # the first model's star sits where its accuracies put it on the logit axes
    ax, (scale_x, scale_y) = (
        fig.axes[0],
        (pixels.shape[1] / fig.bbox.width, pixels.shape[0] / fig.bbox.height),
    )
    point = next(p for p in report.models if p.model == "clip-a" and p.shift == "sketch")
    x, y = ax.transData.transform((point.acc_id, point.acc_shift))
    row, col = round(pixels.shape[0] - y * scale_y), round(x * scale_x)
    assert _count(pixels[row - 2 : row + 3, col - 2 : col + 3], MODEL_COLORS[0]) >= 10

    report.models = []
    empty = tmp_path / "baselines_only.png"
    plot_effective_robustness(report, empty)
    pixels = np.asarray(Image.open(empty).convert("RGB"))
    assert _count(pixels, MODEL_COLORS[0]) == 0 and _count(pixels, MODEL_COLORS[1]) == 0
    assert _count(pixels, FIT_COLOR) > 500
