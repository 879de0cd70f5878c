"""The card's funnel: from the crawl to the final set, one row per step, in the order they ran.

The pool's attribute stages (scores, filters) each annotate every downloaded sample, so their stats
count each filter over the whole pool and overlap; the card does not add them up. The sequence
that does add up is what the set's own manifest recorded: the download (urls in, images out), then
the selection's stages (``curate select`` chains them: each sees what the previous one kept, a
filter's drops carry its first reason), or a mix's draw, then the upsampled copies if any. Every
row says where its numbers come from, and a row whose ``seen`` is not the previous row's ``kept``
says so instead of pretending the chain holds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from curation.core.stats import Counts, StageStats

DOWNLOAD_PREFIX = "download"


@dataclass
class FunnelRow:
    stage: str
    seen: int
    kept: int
    dropped: Counter[str] = field(default_factory=Counter)
    by_source: dict[str, Counts] = field(default_factory=dict)
    note: str = ""

    def reasons(self, limit: int = 4) -> str:
        """The main drop reasons as one short line (the full list is in the per-source table)."""
        top = self.dropped.most_common()
        text = ", ".join(f"{r} {n:,}" for r, n in top[:limit])
        return text + (f", {len(top) - limit} more" if len(top) > limit else "")


def _row(stats: StageStats, note: str = "") -> FunnelRow:
    return FunnelRow(
        stats.stage, stats.total.seen, stats.total.kept, Counter(stats.total.dropped), stats.by_source, note
    )


def _pretty(stage: str) -> str:
    return stage.removeprefix("select:")


def _cut_text(decision: dict[str, Any]) -> str:
    """What a ranking step asked for, from the selection's recorded decision."""
    if not decision:
        return ""
    how = (
        f"{100 * decision['fraction']:g}%" if decision.get("fraction") is not None else decision.get("count")
    )
    if decision.get("kind") == "topk":
        return f"top {how} by {decision.get('score')}"
    if decision.get("kind") == "random":
        return f"random {how or 'sample'} (seed {decision.get('seed')})"
    return ""


def card_funnel(pool_stages: list[StageStats], manifest: dict[str, Any], written: int) -> list[FunnelRow]:
    """Download, then the set's own recorded steps, then upsampling; ``written`` = the set's size."""
    rows = [_row(s, "urls in, images written") for s in pool_stages if s.stage.startswith(DOWNLOAD_PREFIX)]
    steps = [StageStats.from_dict(s) for s in manifest.get("funnel", {}).get("stages", [])]
    if not steps and isinstance(manifest.get("stats"), dict) and "stage" in manifest["stats"]:
        steps = [StageStats.from_dict(manifest["stats"])]  # a mix: candidates in, samples drawn
    cuts = {d.get("step"): d for d in manifest.get("decisions", [])}
    for s in steps:
        row = _row(s, _cut_text(cuts.get(_pretty(s.stage), {})))
        row.stage = _pretty(s.stage)
        rows.append(row)
    if rows and rows[-1].kept != written:
        rows.append(
            FunnelRow(
                "upsampling",
                rows[-1].kept,
                written,
                note=f"{written - rows[-1].kept:+,} copies of kept samples (written more than once)",
            )
        )
    for prev, cur in itertools.pairwise(rows):
        if cur.seen != prev.kept and cur.stage != "upsampling":
            why = (
                " (it reads every pool row, downloaded or not)"
                if prev.stage.startswith(DOWNLOAD_PREFIX) and cur.seen > prev.kept
                else ""
            )
            note = f"sees {cur.seen:,} rows where {prev.stage} kept {prev.kept:,}{why}"
            cur.note = f"{cur.note}; {note}" if cur.note else note
    return rows


def first_reasons(frame: Any, columns: list[str]) -> Counter[str]:
    """Each dropped pool sample counted once, by its first recorded reason (so they add up)."""
    if not columns:
        return Counter()
    first = frame[columns].bfill(axis=1).iloc[:, 0]
    return Counter(first.dropna().astype(str))
