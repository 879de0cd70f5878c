"""Evaluate one model on a suite: zero-shot classification, retrieval, optional linear probe.

Each test set is streamed once; its role decides the task (``in_distribution`` and ``shift``:
zero-shot classification; ``retrieval``: image-text recall@k); the linear probe reuses the same
image features.

Results are one JSON record per model x test set x task, with CLIP_benchmark's keys (``dataset``,
``model``, ``pretrained``, ``task``, ``metrics``) plus ``label``, ``role``, ``n``, ``skipped``,
``ci`` and ``samples`` (a per-sample ``.npz`` so robustness CIs and paired comparisons can be
computed later without re-running the model).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.nn.functional as F
from upath import UPath

from curation.core import storage
from curation.core.io import atomic_path, atomic_write_text
from trainer.eval_config import BootstrapSettings, EvalConfig
from trainer.evaluatees import Evaluatee, ModelSource, is_url
from trainer.retrieval import retrieval_metrics
from trainer.robustness import percentile_ci, resample_means
from trainer.suites import Role, Suite, SuiteError, TestSet
from trainer.testloader import NEEDS_CAPTION, NEEDS_LABEL, PassResult, run_pass
from trainer.zeroshot import classify

log = logging.getLogger(__name__)

LANGUAGE = "en"  # the suites' class names and templates are English (CLIP_benchmark's ``language``)


@dataclass
class Outcome:
    """One result record and the per-sample arrays behind it."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _ci(hits: dict[str, np.ndarray], boot: BootstrapSettings) -> dict[str, Any]:
    if boot.samples == 0:
        return {}
    rng = np.random.default_rng(boot.seed)
    out: dict[str, Any] = {
        k: list(percentile_ci(resample_means(v, boot.samples, rng), boot.level)) for k, v in hits.items()
    }
    out.update(
        level=boot.level,
        method="percentile bootstrap over test samples",
        samples=boot.samples,
        seed=boot.seed,
    )
    return out


def _base_record(ev: Evaluatee, test_set: TestSet, task: str, passed: PassResult) -> dict[str, Any]:
    return {
        "dataset": test_set.name,
        "model": ev.source.model,
        "pretrained": ev.source.pretrained,
        "label": ev.source.label,
        "task": task,
        "role": str(test_set.role),
        "n": passed.n,
        "skipped": dict(passed.skipped),
        "language": LANGUAGE,
    }


def check_labels(test_set: TestSet, passed: PassResult) -> None:
    """Labels must index classnames.txt (and the class subset): a mismatch means a broken test set."""
    if passed.n == 0:
        raise SuiteError(f"{test_set.name}: no usable samples ({dict(passed.skipped)})")
    bad = passed.labels[(passed.labels < 0) | (passed.labels >= len(test_set.classnames))]
    if bad.size:
        raise SuiteError(
            f"{test_set.name}: labels {sorted(set(bad.tolist()))[:5]} do not index classnames.txt "
            f"({len(test_set.classnames)} classes)"
        )
    if test_set.class_subset is not None:
        outside = np.setdiff1d(passed.labels, np.asarray(test_set.class_subset))
        if outside.size:
            raise SuiteError(f"{test_set.name}: labels {outside[:5].tolist()} are outside class_subset")


def evaluate_classification(ev: Evaluatee, test_set: TestSet, passed: PassResult, cfg: EvalConfig) -> Outcome:
    check_labels(test_set, passed)
    logits = ev.class_logits(passed.outputs, test_set)
    result = classify(logits, passed.labels, test_set.class_subset)
    record = _base_record(ev, test_set, test_set.task, passed)
    record.update(
        metrics=result.metrics,
        ci=_ci({"acc1": result.correct}, cfg.bootstrap),
        n_classes=len(test_set.classnames) if test_set.class_subset is None else len(test_set.class_subset),
        n_templates=len(test_set.templates),
        class_subset=test_set.class_subset is not None,
    )
    arrays = {"keys": passed.keys, "labels": passed.labels, "topk": result.topk, "correct": result.correct}
    return Outcome(record, arrays)


def evaluate_retrieval(ev: Evaluatee, test_set: TestSet, passed: PassResult, cfg: EvalConfig) -> Outcome:
    captions = [c for caps in passed.captions for c in caps]
    owners = np.repeat(np.arange(passed.n), [len(c) for c in passed.captions])
    text_emb = ev.text_features(captions, cfg.batch_size)
    result = retrieval_metrics(F.normalize(passed.outputs, dim=-1), text_emb, owners, cfg.recall_k)
    hits = {}
    for k in cfg.recall_k:
        hits[f"image_retrieval_recall@{k}"] = result.image_rank < k
        hits[f"text_retrieval_recall@{k}"] = result.text_rank < k
    record = _base_record(ev, test_set, test_set.task, passed)
    record.update(metrics=result.metrics, ci=_ci(hits, cfg.bootstrap), n_captions=len(captions))
    arrays = {
        "keys": passed.keys,
        "caption_image": owners,
        "image_rank": result.image_rank,
        "text_rank": result.text_rank,
    }
    return Outcome(record, arrays)


def evaluate_probe(
    ev: Evaluatee, test_set: TestSet, passed: PassResult, train: PassResult | None, cfg: EvalConfig
) -> Outcome:
    from trainer.linear_probe import fit_probe, stratified_split  # scikit-learn, only when probing

    probe = cfg.linear_probe
    x, y = passed.outputs.numpy(), passed.labels
    if train is not None:
        split = "train split"
        metrics, correct = fit_probe(train.outputs.numpy(), train.labels, x, y, probe.C, probe.max_iter)
        held = np.arange(passed.n)
    else:
        split = f"stratified split of the test split ({probe.test_fraction:.0%} held out, seed {probe.seed})"
        tr, held = stratified_split(y, probe.test_fraction, probe.seed)
        metrics, correct = fit_probe(x[tr], y[tr], x[held], y[held], probe.C, probe.max_iter)
    record = _base_record(ev, test_set, "linear_probe", passed)
    record.update(
        metrics=metrics, ci=_ci({"acc1": correct}, cfg.bootstrap), n=len(held), probe_trained_on=split
    )
    return Outcome(record, {"keys": passed.keys[held], "labels": y[held], "correct": correct})


def evaluate_test_set(ev: Evaluatee, test_set: TestSet, cfg: EvalConfig) -> list[Outcome]:
    """All the tasks this test set's role asks for, from one pass over its images."""
    start = time.perf_counter()
    retrieval = test_set.role is Role.RETRIEVAL
    if retrieval and not ev.has_text:
        log.warning("%s: skipped, %s has no text tower for retrieval", test_set.name, ev.source.label)
        return []
    needs = NEEDS_CAPTION if retrieval else NEEDS_LABEL

    def run(split_shards: Sequence[Path], what: str) -> PassResult:
        return run_pass(
            ev.image_forward, split_shards, ev.preprocess, needs, cfg.batch_size, cfg.workers, what
        )

    passed = run(test_set.shards, f"{test_set.name} [{ev.source.label}]")
    outcomes = [(evaluate_retrieval if retrieval else evaluate_classification)(ev, test_set, passed, cfg)]
    if cfg.linear_probe.enabled and not retrieval and ev.has_text:
        train = (
            run(test_set.split_shards("train"), f"{test_set.name} train")
            if test_set.has_train_split
            else None
        )
        outcomes.append(evaluate_probe(ev, test_set, passed, train, cfg))
    seconds = round(time.perf_counter() - start, 3)
    for outcome in outcomes:
        outcome.record["seconds"] = seconds
    return outcomes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def evaluate_suite(
    ev: Evaluatee, suite: Suite, cfg: EvalConfig, out_dir: Path | UPath
) -> list[dict[str, Any]]:
    """Evaluate every test set, write per-sample arrays, ``results.jsonl`` and ``results.csv``.

    ``out_dir`` may be a URL: every file is written whole (one object each)."""
    records = []
    for test_set in suite.test_sets:
        for outcome in evaluate_test_set(ev, test_set, cfg):
            rec = outcome.record
            rec["suite"] = suite.name
            rel = Path("samples") / f"{_slug(rec['dataset'])}.{_slug(rec['task'])}.npz"
            with atomic_path(out_dir / rel) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, **outcome.arrays)
            rec["samples"] = str(rel)
            records.append(rec)
            log.info(
                "%s %s %s: %s",
                rec["label"],
                rec["dataset"],
                rec["task"],
                ", ".join(f"{k}={v:.4f}" for k, v in rec["metrics"].items()),
            )
    write_results(records, out_dir)
    return records


def results_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flat table: one row per record, metrics and CI bounds as columns."""
    rows = []
    for rec in records:
        row = {k: rec.get(k) for k in ("dataset", "model", "pretrained", "label", "task", "role", "n")}
        row.update(rec["metrics"])
        for name, bounds in rec.get("ci", {}).items():
            if isinstance(bounds, list):
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bounds
        rows.append(row)
    return pd.DataFrame(rows)


def write_results(records: Sequence[dict[str, Any]], out_dir: Path | UPath) -> None:
    lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
    atomic_write_text(out_dir / "results.jsonl", lines)
    atomic_write_text(out_dir / "results.csv", results_frame(records).to_csv(index=False))


CLIP_BENCHMARK_TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")


def write_clip_benchmark(records: Sequence[dict[str, Any]], out_dir: Path | UPath) -> list[Path | UPath]:
    """The records as ``clip_benchmark eval`` writes them: one JSON per dataset x model x task.

    File names follow its default ``{dataset}_{pretrained}_{model}_{language}_{task}.json`` (a
    checkpoint file is named by its base name); the dataset is ``wds/NAME`` as in its webdataset
    runs, and the JSON has exactly its keys, so its ``clip_benchmark build`` table reads them.
    """
    paths: list[Path | UPath] = []
    for rec in records:
        if rec["task"] not in CLIP_BENCHMARK_TASKS:
            continue
        pretrained = str(rec.get("pretrained") or "")
        if is_url(pretrained):  # a checkpoint on object storage: named by its base name too
            slug = storage.location(pretrained).name
        else:
            slug = Path(pretrained).name if Path(pretrained).is_file() else pretrained
        name = f"{rec['dataset']}_{slug}_{rec['model']}_{LANGUAGE}_{rec['task']}.json".replace("/", "_")
        dump = {
            "dataset": f"wds/{rec['dataset']}",
            "model": rec["model"],
            "pretrained": pretrained,
            "task": rec["task"],
            "metrics": rec["metrics"],
            "language": rec.get("language", LANGUAGE),
        }
        atomic_write_text(out_dir / name, json.dumps(dump))
        paths.append(out_dir / name)
    return paths


def default_out_dir(source: ModelSource, suite: Suite) -> Path | UPath:
    if source.run_dir is not None:
        return source.run_dir / "eval" / _slug(suite.name)
    return Path("eval") / _slug(source.label) / _slug(suite.name)
