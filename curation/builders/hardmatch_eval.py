"""Hardmatch labels scored against a ground-truth table (the synthetic crawl writes one).

Two precisions answer two questions. Against the class the caption names (``caption_class``): is
the matcher right about what the text says? Against the class the image shows (``class_name``):
is the label right for training? They differ by the captions that name another object than the
one pictured (mismatched pairs), which no text matcher can detect. Recall is over the pairs whose
caption names their own class (``caption_names_class``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.core import storage


def _np(col: pa.ChunkedArray, fill: object) -> np.ndarray:
    return np.asarray(col.fill_null(fill).to_numpy(zero_copy_only=False))


def _rate(num: int, den: int) -> float:
    return round(num / den, 6) if den else 0.0


def evaluate(
    matches: pa.Table,
    ground_truth: str | Path,
    image_class: str = "class_name",
    caption_class: str = "caption_class",
    names_column: str = "caption_names_class",
) -> dict[str, object]:
    """Precision (vs caption and vs image class) and recall of the labels in ``matches``."""
    available = storage.read_parquet_schema(ground_truth).names
    columns = ["uid", image_class, names_column] + ([caption_class] if caption_class in available else [])
    gt = storage.read_parquet(ground_truth, columns=columns)
    pred = matches.select(["uid", "class_name", "n_classes"]).rename_columns(["uid", "pred", "n_classes"])
    pred = pred.set_column(1, "pred", pred["pred"].cast(pa.string()))
    joined = pred.join(gt, "uid", join_type="inner")
    predicted = _np(joined["pred"], "")
    labelled = predicted != ""
    image_ok = labelled & (predicted == _np(joined[image_class].cast(pa.string()), ""))
    names = _np(joined[names_column], False).astype(bool)
    n_classes = _np(joined["n_classes"], 0)
    single = names & (n_classes <= 1)
    out: dict[str, object] = {
        "ground_truth": str(ground_truth),
        "evaluated_captions": joined.num_rows,
        "not_in_ground_truth": matches.num_rows - joined.num_rows,
        "labelled": int(labelled.sum()),
        "precision_vs_image_class": _rate(int(image_ok.sum()), int(labelled.sum())),
        "precision_on_pairs_naming_their_class": _rate(
            int((names & image_ok).sum()), int((names & labelled).sum())
        ),
        "recall_denominator": int(names.sum()),
        "recalled": int((names & image_ok).sum()),
        "recall": _rate(int((names & image_ok).sum()), int(names.sum())),
        "recall_single_class_captions": _rate(int((single & image_ok).sum()), int(single.sum())),
        "naming_own_class_but_ambiguous": int((names & (n_classes > 1)).sum()),
        "naming_own_class_but_unmatched": int((names & (n_classes == 0)).sum()),
    }
    if caption_class in joined.column_names:
        text_ok = labelled & (predicted == _np(joined[caption_class].cast(pa.string()), ""))
        out["precision_vs_caption_class"] = _rate(int(text_ok.sum()), int(labelled.sum()))
        out["precision"] = out["precision_vs_caption_class"]
        out["precision_definition"] = "label == the class the caption names (caption_class)"
    else:
        out["precision"] = out["precision_vs_image_class"]
        out["precision_definition"] = "label == the class the image shows (class_name)"
    return out


def read_labelled_captions(path: str | Path) -> tuple[list[str], list[str | None]]:
    """A hand-labelled caption set: TSV ``gold, caption, note`` ('-' = names no class or several)."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader((line for line in f if not line.startswith("#")), delimiter="\t")]
    header, body = rows[0], rows[1:]
    if header[:2] != ["gold", "caption"]:
        raise ValueError(f"{path}: expected columns gold, caption, note; got {header}")
    return [r[1] for r in body], [None if r[0] == "-" else r[0] for r in body]


def score_labels(predicted: list[str | None], gold: list[str | None]) -> dict[str, object]:
    """Precision (right labels / labels given) and recall (right labels / captions with a gold class)."""
    pairs = list(zip(predicted, gold, strict=True))
    given = sum(p is not None for p, _ in pairs)
    right = sum(p is not None and p == g for p, g in pairs)
    wanted = sum(g is not None for _, g in pairs)
    return {
        "captions": len(pairs),
        "with_gold_class": wanted,
        "labelled": given,
        "correct": right,
        "precision": _rate(right, given),
        "recall": _rate(right, wanted),
        "errors": [{"predicted": p, "gold": g, "index": i} for i, (p, g) in enumerate(pairs) if p != g],
    }
