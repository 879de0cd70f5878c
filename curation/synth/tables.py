"""The crawl's tables: what the pipeline sees, the ground truth kept apart, the server's faults.

``crawl.parquet`` has only ``url, text, uid, source``, like any crawl. Uids are
``compute_uid(url_path, caption)`` with the path relative to the server root
(``/photo/3f/9a1c….jpg``), so they do not change with the port the server happens to get;
:func:`rebase_urls` points the urls at wherever the server runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.io import atomic_write_json, atomic_write_parquet
from curation.core.uid import compute_uid
from curation.synth import junk
from curation.synth.config import SynthConfig
from curation.synth.crawl import LANGS, CrawlPlan, Rendered
from curation.synth.overlay import OVERLAYS

CRAWL_SCHEMA = pa.schema(
    [("url", pa.string()), ("text", pa.string()), ("uid", pa.string()), ("source", pa.string())]
)
GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("class_name", pa.string()),
        ("label", pa.int32()),
        ("caption_class", pa.string()),
        ("caption_names_class", pa.bool_()),
        ("junk", pa.string()),
        ("lang", pa.string()),
        ("downloadable", pa.bool_()),
        ("expected_error", pa.string()),
        ("dup_of", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("overlay", pa.string()),  # none, text or watermark; null where no picture is served
    ]
)


@dataclass
class CrawlTables:
    crawl: pa.Table
    ground_truth: pa.Table
    faults: dict[str, dict]


def crawl_tables(cfg: SynthConfig, plan: CrawlPlan, rendered: Rendered) -> CrawlTables:
    """The crawl, its ground truth (same rows, same order) and the server's faults."""
    names = list(cfg.sources)
    kinds = [junk.KINDS[k] for k in plan.junk.tolist()]
    uids = [compute_uid(p, c) for p, c in zip(plan.paths, rendered.caption, strict=True)]
    urls = [cfg.base_url + p for p in plan.paths]
    sources = [names[s] for s in plan.source.tolist()]
    no_image = [k in junk.FAILED_DOWNLOADS for k in kinds]
    labels = [-1 if bad else int(lab) for lab, bad in zip(plan.label.tolist(), no_image, strict=True)]
    class_names = [None if lab < 0 else cfg.classes[lab] for lab in labels]
    names_class = [
        cn is not None and cc is not None and cn in cc.split("|")
        for cn, cc in zip(class_names, rendered.caption_class, strict=True)
    ]
    dup_of = [uids[d] if d >= 0 else None for d in plan.dup_of.tolist()]
    marks = plan.overlay if plan.overlay is not None else [0] * len(kinds)
    overlay = [None if bad else OVERLAYS[m] for m, bad in zip(marks, no_image, strict=True)]
    crawl = pa.table([urls, rendered.caption, uids, sources], schema=CRAWL_SCHEMA)
    gt = pa.table(
        [
            uids, urls, sources, class_names, labels, rendered.caption_class, names_class, kinds,
            [LANGS[x] for x in plan.lang.tolist()], [not b for b in no_image],
            [junk.EXPECTED_ERROR.get(k) for k in kinds], dup_of, rendered.width, rendered.height, overlay,
        ],
        schema=GROUND_TRUTH_SCHEMA,
    )  # fmt: skip
    faults = {}
    for path, kind, target in zip(plan.paths, kinds, plan.files, strict=True):
        entry = junk.fault_entry(kind, delay_s=cfg.slow_delay_s, target=target)
        if entry is not None:
            faults[path] = entry
    return CrawlTables(crawl, gt, faults)


def write_crawl(out: Path, tables: CrawlTables) -> None:
    atomic_write_parquet(out / "crawl.parquet", tables.crawl)
    atomic_write_parquet(out / "ground_truth.parquet", tables.ground_truth)
    atomic_write_json(out / "faults.json", tables.faults)


def crawl_counts(cfg: SynthConfig, plan: CrawlPlan) -> dict:
    """Pairs per source and junk kind (the manifest's summary)."""
    names = list(cfg.sources)
    by_source: dict[str, Counter[str]] = {n: Counter() for n in names}
    for s, k in zip(plan.source.tolist(), plan.junk.tolist(), strict=True):
        by_source[names[s]][junk.KINDS[k]] += 1
    total: Counter[str] = Counter()
    for c in by_source.values():
        total.update(c)
    return {
        "pairs": len(plan),
        "by_kind": dict(sorted(total.items())),
        "by_source": {n: {"pairs": sum(c.values()), **dict(sorted(c.items()))} for n, c in by_source.items()},
        "downloadable": int(sum(v for k, v in total.items() if k not in junk.FAILED_DOWNLOADS)),
        "multi_class_captions": int((plan.second >= 0).sum()),
    }


def rebase_urls(table: pa.Table, base_url: str, column: str = "url") -> pa.Table:
    """Point every url of a crawl (or ground-truth) table at another server; uids are unchanged."""
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    urls = table.column(column)
    ok = pc.fill_null(pc.match_substring_regex(urls, r"^https?://[^/]+/"), False)
    bad = len(urls) - pc.sum(ok).as_py() if len(urls) else 0
    if bad:
        raise ValueError(f"{bad} urls in column {column!r} are not absolute http(s) urls")
    rebased = pc.replace_substring_regex(
        urls, r"^https?://[^/]+", base.replace("\\", "\\\\"), max_replacements=1
    )
    return table.set_column(table.schema.get_field_index(column), column, rebased)
