"""The ImageNet-Captions build report: join rate, why rows did not join or were dropped, examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core import storage
from curation.core.io import atomic_write_json, atomic_write_text
from curation.core.stats import Funnel

META_FIELDS = ("title", "description", "tags")


def build_report(funnel: Funnel, info: dict[str, Any], pool: Path, config: dict[str, Any]) -> dict[str, Any]:
    join, _, image = funnel.stages
    n = join.total.seen
    columns = ["status", "caption", "title", "description", "tags"]
    files = storage.list_files(pool, "[0-9]*.parquet") if n else []
    tables = [storage.read_parquet(p, columns) for p in files]
    samples = pa.concat_tables(tables) if tables else None
    reasons: dict[str, int] = {}
    for s in funnel.stages:
        reasons.update(s.total.dropped)
    report: dict[str, Any] = {
        **info,
        "joined": join.total.kept,
        "join_rate": round(join.total.kept / n, 6) if n else 0.0,
        "samples": image.total.kept,
        "sample_rate": round(image.total.kept / n, 6) if n else 0.0,
        "not_joined_or_dropped": dict(sorted(reasons.items())),
        "funnel": funnel.to_dict(),
        "config": config,
    }
    if samples is not None:
        ok = samples.filter(pc.equal(samples["status"], "success"))
        report["fields_with_text"] = {
            f: int(pc.sum(pc.greater(pc.utf8_length(ok[f].fill_null("")), 0)).as_py() or 0)
            for f in META_FIELDS
        }
        lengths = pc.utf8_length(ok["caption"]).to_numpy(zero_copy_only=False) if ok.num_rows else np.zeros(0)
        report["caption_chars"] = {
            "mean": round(float(lengths.mean()), 1) if len(lengths) else 0,
            "max": int(lengths.max()) if len(lengths) else 0,
        }
        report["examples"] = ok["caption"].to_pylist()[:5]
    return report


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# ImageNet-Captions build",
        "",
        f"- index rows: {report['index_rows']}, joined with metadata: {report['joined']} "
        f"(join rate {100 * report['join_rate']:.2f}%)",
        f"- samples written: {report['samples']} ({100 * report['sample_rate']:.2f}% of the index)",
        f"- metadata rows: {report['meta_rows']} ({report['duplicate_meta_rows']} duplicate photo ids, "
        f"{report['orphan_meta_rows']} matching no indexed image, "
        f"{report['meta_rows_without_photo_id']} without a usable photo id)",
        *[
            f"- torn tar {t['tar']}: {t['damage']}; the images after the damage are lost (`truncated_tar`)"
            for t in report.get("torn_tars", [])
        ],
        "",
        "| reason | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in report["not_joined_or_dropped"].items()],
        "",
        "Examples:",
        "",
        *[f"- {c}" for c in report.get("examples", [])],
    ]
    return "\n".join(lines) + "\n"


def finish_report(out: Path, funnel: Funnel, info: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    report = build_report(funnel, info, out, config)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report
