"""Filter and selection quality against the synthetic crawl's ground truth: one definition of each figure.

The bench scripts print these figures and the tests assert on them, so both measure the same thing.

Near dedup (``ground_truth.parquet``: ``junk == "near_dup"`` rows name their original in ``dup_of``):

- a sample's *family* is the uid of the original it copies (itself if it copies nothing), so an
  original, its exact copies and its near copies form one family;
- a near copy is *found* when it has a representative and shares it with its original (they are in
  one group, whichever of the two is kept); recall = found / near copies whose original is in the pool;
- a *false merge* is a sample dropped in favour of a representative of another family; the false
  merge rate divides their number by all samples searched.

Semantic dedup (``junk == "semantic_dup"`` rows: another crop, grading and caption of ``dup_of``):

- a semantic copy is *found* when it or its original was dropped in favour of a member of their own
  family; recall = found / semantic copies whose original was searched;
- a *false drop* is a sample dropped in favour of a member of another family; the false drop rate
  divides their number by all samples searched.

Cleanliness: a pair is *clean* when the ground truth calls it ``clean``, or it is a transport quirk
(``slow``, ``redirect``) whose caption names the image's class (those download a clean pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.synth.junk import CLEAN, TRANSPORT_QUIRKS


def family_of(gt: pa.Table) -> dict[str, str]:
    """Each uid's duplicate family: the uid of the original its copies point to (itself if none)."""
    return {u: d or u for u, d in zip(gt["uid"].to_pylist(), gt["dup_of"].to_pylist(), strict=True)}


def near_dup_figures(
    uids: Sequence[str], rep: Sequence[str | None], junk: dict[str, str], fam: dict[str, str]
) -> dict:
    """Share of near copies grouped with their original, and samples merged into another family.

    ``rep[i]`` is the representative ``uids[i]`` was grouped under (itself when kept, None when it
    was not searched, e.g. it had no embedding).
    """
    rep_of = dict(zip(uids, rep, strict=True))
    copies = [u for u in uids if junk.get(u) == "near_dup" and fam[u] in rep_of]
    found = sum(rep_of[u] is not None and rep_of[u] == rep_of[fam[u]] for u in copies)
    wrong = sum(r is not None and r != u and fam[r] != fam[u] for u, r in rep_of.items())
    return {
        "near_copies": len(copies),
        "found": found,
        "recall": round(found / max(1, len(copies)), 4),
        "false_merges": wrong,
        "false_merge_rate": round(wrong / max(1, len(uids)), 4),
    }


def semdedup_figures(
    uids: Sequence[str], dropped_for: Sequence[str | None], junk: dict[str, str], fam: dict[str, str]
) -> dict:
    """Recall of injected semantic copies and the false drop rate (see the module docstring).

    ``dropped_for[i]`` is the sample ``uids[i]`` was dropped in favour of (None when kept); only
    searched samples (with an embedding) are passed.
    """
    by = dict(zip(uids, dropped_for, strict=True))

    def own(u: str) -> bool:
        return by[u] is not None and fam.get(by[u]) == fam[u]

    copies = [u for u in uids if junk.get(u) == "semantic_dup" and fam[u] in by]
    found = sum(own(u) or own(fam[u]) for u in copies)
    false = sum(d is not None and fam.get(d) != fam[u] for u, d in by.items())
    return {
        "semantic_copies": len(copies),
        "found": found,
        "recall": round(found / max(1, len(copies)), 4),
        "false_drops": false,
        "false_drop_rate": round(false / max(1, len(uids)), 4),
        "dropped": sum(d is not None for d in by.values()),
    }


def clean_mask(gt: pa.Table) -> np.ndarray:
    """Per ground-truth row: is the pair clean (see the module docstring)."""
    junk = gt["junk"]
    quirk_named = pc.and_(pc.is_in(junk, pa.array(sorted(TRANSPORT_QUIRKS))), gt["caption_names_class"])
    return pc.or_(pc.equal(junk, CLEAN), quirk_named).to_numpy(zero_copy_only=False)


def clean_fraction(uids_hex: pa.Array, clean_uids: pa.Array) -> float:
    """Share of ``uids_hex`` that are clean pairs (NaN for an empty set)."""
    if len(uids_hex) == 0:
        return float("nan")
    return pc.sum(pc.is_in(uids_hex, value_set=clean_uids)).as_py() / len(uids_hex)


def topk_cleanliness(
    pool: Path,
    gt: pa.Table,
    score: str,
    fractions: Sequence[float],
    filters: str | None = None,
    seed: int = 0,
) -> list[dict]:
    """Clean fraction of the top ``fraction`` by ``score`` (``stage:column``) and of a seeded random
    subset of the same size, both drawn by ``curate select``'s own steps (after the ``filters``
    stage's verdicts when given), so the figures describe what selection really keeps. The
    fraction 1.0 row is the candidate pool itself (top and random are then the same set)."""
    from curation.core.uidvec import uids_to_hex_array
    from curation.selection.run import SelectSpec, run_selection

    clean = gt["uid"].filter(pa.array(clean_mask(gt)))
    base = [{"filter": {"stage": filters}}] if filters else []

    def select(name: str, step: dict) -> np.ndarray:
        return run_selection(pool, SelectSpec(name=name, steps=[*base, step])).subset.uids

    rows = []
    for fraction in fractions:
        top = select("topk", {"topk": {"score": score, "fraction": fraction}})
        n = len(top)
        rand = select("random", {"random": {"count": n, "seed": seed}})
        rows.append(
            {
                "k": fraction,
                "n": n,
                "clean_topk": clean_fraction(uids_to_hex_array(top), clean),
                "clean_random": clean_fraction(uids_to_hex_array(rand), clean),
            }
        )
    return rows
