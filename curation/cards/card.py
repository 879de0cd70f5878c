"""Dataset cards: a Hugging Face-style ``README.md`` and a self-contained HTML page per curated set.

Everything shown comes from recorded stats and attribute tables (see :mod:`curation.cards.data`).
Captions and urls are untrusted web text: the HTML template autoescapes them and the Markdown
renderer escapes them, so a caption can never inject markup or script.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from curation import __version__
from curation.cards.data import CardData, reason_counts, size_category
from curation.core.io import atomic_write_bytes, atomic_write_text
from curation.core.pool import Pool
from curation.core.safepath import unique_safe_names
from curation.core.stats import Funnel
from curation.core.templating import template_env

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md_escape(text: Any, limit: int = 160) -> str:
    """Untrusted text as literal Markdown: HTML-escaped, Markdown syntax backslash-escaped, one line."""
    s = " ".join(str(text if text is not None else "").split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(s, quote=True))


def _axes() -> tuple[Figure, Any]:
    """A figure without pyplot's global state (safe in workers and threads)."""
    fig = Figure(figsize=(5, 3))
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def plots(data: CardData) -> dict[str, bytes]:
    """Distribution plots, pool vs kept, as PNG bytes by file name."""
    out: dict[str, bytes] = {}
    pool, kept = data.frame, data.kept
    file_names = unique_safe_names(data.score_columns())  # column names come from data
    for col in data.score_columns():
        fig, ax = _axes()
        ax.hist(pool[col].dropna(), bins=40, alpha=0.5, label="pool")
        ax.hist(kept[col].dropna(), bins=40, alpha=0.7, label="kept")
        if kept[col].notna().any() and len(kept) < len(pool):
            ax.axvline(
                kept[col].min(), color="red", linestyle="--", label=f"lowest kept {kept[col].min():.3f}"
            )
        ax.set(xlabel=col, ylabel="samples", title=f"{col} distribution")
        ax.legend()
        out[f"score_{file_names[col]}.png"] = _png(fig)
    if "caption" in pool:
        fig, ax = _axes()
        for frame, label in ((pool, "pool"), (kept, "kept")):
            ax.hist(
                frame["caption"].fillna("").str.split().str.len(), bins=range(0, 40), alpha=0.6, label=label
            )
        ax.set(xlabel="caption words", ylabel="samples", title="caption length")
        ax.legend()
        out["caption_length.png"] = _png(fig)
    if "lang" in pool:
        fig, ax = _axes()
        top = pool["lang"].fillna("?").value_counts().head(10)
        kept_counts = kept["lang"].fillna("?").value_counts().reindex(top.index, fill_value=0)
        x = range(len(top))
        ax.bar([i - 0.2 for i in x], top.values, width=0.4, label="pool")
        ax.bar([i + 0.2 for i in x], kept_counts.values, width=0.4, label="kept")
        ax.set_xticks(list(x), list(top.index))
        ax.set(ylabel="samples", title="caption language (fastText lid.176)")
        ax.legend()
        out["language.png"] = _png(fig)
    if {"original_width", "original_height"} <= set(pool.columns):
        fig, ax = _axes()
        ax.scatter(pool["original_width"], pool["original_height"], s=3, alpha=0.3, label="pool")
        ax.scatter(kept["original_width"], kept["original_height"], s=3, alpha=0.5, label="kept")
        ax.set(xlabel="width (px)", ylabel="height (px)", title="original image size")
        ax.legend()
        out["image_size.png"] = _png(fig)
    return out


def sample_grid(data: CardData, pool: Pool, per_group: int = 8) -> list[dict[str, Any]]:
    """A few kept and a few dropped samples (with the reason) as thumbnails."""
    frame = data.frame
    reasons = data.reason_columns()
    first_reason = frame[reasons].bfill(axis=1).iloc[:, 0] if reasons else pd.Series(None, index=frame.index)
    kept = frame[frame["in_subset"]].sort_values("uid").head(per_group)
    dropped = frame[~frame["in_subset"]].assign(reason=first_reason).sort_values("uid").head(per_group)
    wanted = {**dict.fromkeys(kept["uid"], "kept"), **dict.fromkeys(dropped["uid"], "dropped")}
    thumbs = _thumbnails(pool, set(wanted))
    rows = []
    for frame_part, group in ((kept.assign(reason=None), "kept"), (dropped, "dropped")):
        for r in frame_part.itertuples():
            rows.append(
                {
                    "group": group,
                    "uid": r.uid,
                    "caption": r.caption,
                    "reason": r.reason or ("not selected" if group == "dropped" else ""),
                    "image": thumbs.get(r.uid),
                }
            )
    return rows


def _thumbnails(pool: Pool, uids: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if not pool.has_images():
        return out
    for shard in pool.shard_ids():
        rows = pool.read_samples(shard, ["uid", "key"]).to_pylist() if uids else []
        keys = {r["key"]: r["uid"] for r in rows if r["uid"] in uids}
        if not keys or not pool.tar_path(shard).exists():
            continue
        for sample in pool.iter_tar(shard):
            uid = keys.get(sample.key)
            raw = next((sample.files[e] for e in ("jpg", "png", "webp") if e in sample.files), None)
            if uid and raw:
                out[uid] = _thumbnail(raw)
        if len(out) == len(uids):
            break
    return out


def _thumbnail(raw: bytes) -> str:
    try:
        img = Image.open(io.BytesIO(raw)).convert("RGB")
        img.thumbnail((96, 96))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()
    except Exception:  # an undecodable thumbnail is shown as missing, not a failed card
        return ""


def card_context(data: CardData, pool: Pool, figures: dict[str, bytes]) -> dict[str, Any]:
    funnel = Funnel(data.stages)
    for stage in funnel.stages:
        stage.check_balanced()
    n = len(data.subset)
    sources = data.source_counts()
    results = [r for r in data.results if r.get("set") in (None, data.name)]
    hard = None
    if data.labels is not None:
        counts = data.labels["class_name"].value_counts()
        hard = {"classes": int(counts.size), "counts": counts.to_dict()}
    return {
        "name": data.name,
        "n": n,
        "unique": data.subset.unique_count(),
        "pool_size": len(data.frame),
        "size_category": size_category(n),
        "sources": [{"source": s, "count": c, "share": c / max(n, 1)} for s, c in sources.items()],
        "funnel_rows": funnel.rows(),
        "funnel_reasons": sorted({k for r in funnel.rows() for k in r if k.startswith("dropped_")}),
        "drop_reasons": reason_counts(data.frame, data.reason_columns()).most_common(),
        "duplicates": data.duplicate_groups(),
        "hardmatch": hard,
        "samples": sample_grid(data, pool),
        "figures": {k: base64.b64encode(v).decode() for k, v in figures.items()},
        "manifest": data.subset.manifest,
        "results": results,
        "code_version": __version__,
        "source_names": sorted(sources),
    }


def _env(autoescape: bool) -> jinja2.Environment:
    env = template_env(autoescape)
    env.filters["md"] = md_escape
    return env


def write_card(data: CardData, pool: Pool, out: Path) -> tuple[Path, Path]:
    """Write ``out/README.md``, ``out/card.html`` and the figures; returns the two card paths."""
    out.mkdir(parents=True, exist_ok=True)
    figures = plots(data)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    ctx = card_context(data, pool, figures)
    atomic_write_text(out / "README.md", _env(False).get_template("card.md.j2").render(**ctx))
    atomic_write_text(out / "card.html", _env(True).get_template("card.html.j2").render(**ctx))
    return out / "README.md", out / "card.html"
