"""What a hardmatch run found: per-class counts, ambiguous names, classes never named, accuracy.

Everything is computed from the gathered match tables with numpy (``bincount`` over the flattened
lists of matched classes), so the report of a run over millions of captions takes seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.builders.classvocab import Vocabulary
from curation.core.stats import StageStats

TOP = 25


def cooccurring_pairs(matched: pa.ListArray | pa.ChunkedArray, n_classes: int) -> list[tuple[int, int, int]]:
    """(class a, class b, captions naming both), most frequent first, over captions naming >= 2 classes."""
    if isinstance(matched, pa.ChunkedArray):
        matched = (
            pa.concat_arrays(matched.chunks) if matched.num_chunks else pa.array([], pa.list_(pa.int32()))
        )
    values = pc.list_flatten(matched).to_numpy(zero_copy_only=False).astype(np.int64)
    parents = pc.list_parent_indices(matched).to_numpy(zero_copy_only=False).astype(np.int64)
    keys = []
    for d in range(1, int(pc.max(pc.list_value_length(matched)).as_py() or 0)):
        same = parents[d:] == parents[:-d]  # values of one list are sorted, so a < b
        keys.append(values[:-d][same] * n_classes + values[d:][same])
    if not keys or not sum(len(k) for k in keys):
        return []
    pair_keys, counts = np.unique(np.concatenate(keys), return_counts=True)
    order = np.lexsort((pair_keys, -counts))[:TOP]
    return [(int(pair_keys[i] // n_classes), int(pair_keys[i] % n_classes), int(counts[i])) for i in order]


def class_counts(table: pa.Table, n_classes: int) -> dict[str, np.ndarray]:
    """Per class: captions labelled with it, naming it at all, and naming it among other classes."""
    label = (
        table["label"].fill_null(-1).to_numpy().astype(np.int64) if table.num_rows else np.zeros(0, np.int64)
    )
    matched = table["matched"].combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
    values = pc.list_flatten(matched).to_numpy(zero_copy_only=False).astype(np.int64)
    parents = pc.list_parent_indices(matched).to_numpy(zero_copy_only=False).astype(np.int64)
    n_named = table["n_classes"].to_numpy() if table.num_rows else np.zeros(0, np.int64)
    return {
        "labelled": np.bincount(label[label >= 0], minlength=n_classes),
        "named": np.bincount(values, minlength=n_classes),
        "ambiguous": np.bincount(values[n_named[parents] > 1], minlength=n_classes),
    }


def build_report(
    table: pa.Table,
    vocab: Vocabulary,
    stats: StageStats,
    settings: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    min_support: int = 5,
) -> dict[str, Any]:
    names = vocab.class_names
    n = len(names)
    counts = class_counts(table, n)
    named, amb = counts["named"], counts["ambiguous"]
    rate = np.divide(amb, named, out=np.zeros(n), where=named > 0)
    supported = np.flatnonzero(named >= min_support)
    most_amb = supported[np.lexsort((supported, -rate[supported]))][:TOP]
    seconds = float(stats.extra.get("match_seconds", 0.0))
    report: dict[str, Any] = {
        "settings": settings,
        "classes": n,
        "surface_forms": len(vocab.forms),
        "input_captions": stats.total.seen,
        "labelled": stats.total.kept,
        "labelled_fraction": round(stats.total.kept / stats.total.seen, 6) if stats.total.seen else 0.0,
        "dropped": dict(sorted(stats.total.dropped.items())),
        "ambiguous_captions": int((table["n_classes"].to_numpy() > 1).sum()) if table.num_rows else 0,
        "funnel": stats.to_dict(),
        "throughput": {
            "captions": stats.total.seen,
            "match_seconds": round(seconds, 3),
            "captions_per_s": round(stats.total.seen / seconds) if seconds else None,
        },
        "per_class": [
            {
                "label": i,
                "class_name": names[i],
                "labelled": int(counts["labelled"][i]),
                "named": int(named[i]),
                "named_with_other_classes": int(amb[i]),
            }
            for i in range(n)
        ],
        "classes_without_match": [names[i] for i in np.flatnonzero(named == 0)],
        "classes_never_labelled": [names[i] for i in np.flatnonzero(counts["labelled"] == 0)],
        "most_ambiguous_classes": [
            {
                "class_name": names[i],
                "named": int(named[i]),
                "named_with_other_classes": int(amb[i]),
                "rate": round(float(rate[i]), 4),
            }
            for i in most_amb
            if amb[i] > 0
        ],
        "most_cooccurring_pairs": [
            {"a": names[a], "b": names[b], "captions": c}
            for a, b, c in cooccurring_pairs(table["matched"], n)
        ]
        if table.num_rows
        else [],
        "homonyms": vocab.homonyms(),
        "merged_classes": vocab.merged_classes(),
        "nested_names": vocab.nested(),
    }
    if evaluation is not None:
        report["ground_truth"] = evaluation
    return report


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def report_markdown(report: dict[str, Any]) -> str:
    """A short human summary of :func:`build_report`'s dict."""
    tp = report["throughput"]
    top = sorted(report["per_class"], key=lambda r: -r["labelled"])[:10]
    lines = [
        "# Hardmatch report",
        "",
        f"- classes: {report['classes']} ({report['surface_forms']} surface forms)",
        f"- captions: {report['input_captions']}, labelled: {report['labelled']} "
        f"({100 * report['labelled_fraction']:.2f}%)",
        f"- dropped: {', '.join(f'{k} {v}' for k, v in report['dropped'].items()) or 'none'}",
        f"- repeated uids (later rows dropped as duplicate_uid): {report.get('repeated_uids', 0)}, "
        f"of which with a different decision than the kept row: {report.get('conflicting_uids', 0)}",
        f"- captions naming several classes: {report['ambiguous_captions']} "
        f"(policy: {report['settings'].get('ambiguous')})",
        f"- classes never named: {len(report['classes_without_match'])}"
        + (
            f" (e.g. {', '.join(report['classes_without_match'][:8])})"
            if report["classes_without_match"]
            else ""
        ),
        f"- matching speed: {tp['captions_per_s']} captions/s (one core, {tp['match_seconds']} s)",
    ]
    if "ground_truth" in report:
        gt = report["ground_truth"]
        lines += [
            f"- against ground truth: precision {gt['precision']:.4f} ({gt['precision_definition']}); "
            f"precision against the pictured class {gt['precision_vs_image_class']:.4f}",
            f"- recall {gt['recall']:.4f} over {gt['recall_denominator']} captions that name their class "
            f"({gt['naming_own_class_but_ambiguous']} of them also name another class, "
            f"{gt['naming_own_class_but_unmatched']} name it in a way no form matches); "
            f"recall over those naming only their class {gt['recall_single_class_captions']:.4f}",
        ]
    lines += ["", "## Most labelled classes", ""]
    lines += _table(
        ["class", "labelled", "named"], [[r["class_name"], r["labelled"], r["named"]] for r in top]
    )
    lines += ["", "## Most ambiguous classes (named together with another class)", ""]
    lines += _table(
        ["class", "named", "with others", "rate"],
        [
            [r["class_name"], r["named"], r["named_with_other_classes"], r["rate"]]
            for r in report["most_ambiguous_classes"][:10]
        ],
    )
    lines += ["", "## Class pairs named together most often", ""]
    lines += _table(
        ["a", "b", "captions"],
        [[r["a"], r["b"], r["captions"]] for r in report["most_cooccurring_pairs"][:10]],
    )
    lines += ["", "## Names shared by several classes (homonyms)", ""]
    lines += [f"- {h['form']}: {', '.join(h['classes'])}" for h in report["homonyms"][:20]] or ["- none"]
    lines += ["", "## Duplicate class names merged (the later label is never given)", ""]
    lines += [
        f"- {m['name']}: label {m['label']} -> {m['labelled_as']}" for m in report["merged_classes"]
    ] or ["- none"]
    lines += ["", "## Names inside other classes' names", ""]
    lines += [
        f"- {r['form']} ({r['class']}) in {r['inside']} ({r['inside_class']})"
        for r in report["nested_names"][:20]
    ] or ["- none"]
    return "\n".join(lines) + "\n"
