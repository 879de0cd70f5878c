"""Dataset cards: a Hugging Face-style ``README.md`` and a self-contained HTML page per curated set.

Everything shown comes from recorded stats and attribute tables (see :mod:`curation.cards.data`).
Captions and urls are untrusted web text: the HTML template autoescapes them and the Markdown
renderer escapes them, so a caption can never inject markup or script.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml
from matplotlib.figure import Figure
from PIL import Image

from curation import __version__
from curation.cards.data import CardData, size_category
from curation.cards.funnel import FunnelRow, card_funnel, first_reasons
from curation.core import storage
from curation.core.io import atomic_write_bytes, atomic_write_text
from curation.core.pool import Pool
from curation.core.safepath import unique_safe_names
from curation.core.templating import template_env

PROVENANCE_FILE = "provenance.json"  # the subset's manifest, beside the card, linked from it
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md_escape(text: Any, limit: int = 160) -> str:
    """Untrusted text as literal Markdown: HTML-escaped, Markdown syntax backslash-escaped, one line."""
    s = " ".join(str(text if text is not None else "").split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    # quotes stay: they are plain text in Markdown, and an escaped entity's '#' would break it
    return _MD_SPECIAL.sub(r"\\\1", html.escape(s, quote=False))


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
    """A few kept and a few dropped samples (with the reason) as thumbnails, none shown twice.

    Web pools repeat captions and images (templates, reposts, upsampled copies): examples are
    distinct by caption and by image hash, and the dropped ones take each reason in turn.
    """
    frame = data.frame
    reasons = data.reason_columns()
    first_reason = frame[reasons].bfill(axis=1).iloc[:, 0] if reasons else pd.Series(None, index=frame.index)
    frame = frame.assign(reason=first_reason.fillna("not selected"))
    distinct = [c for c in ("caption", "sha256") if c in frame]
    for col in distinct:
        frame = frame[frame[col].isna() | ~frame[col].duplicated()]
    kept = frame[frame["in_subset"]].sort_values("uid").head(per_group)
    dropped = frame[~frame["in_subset"]].sort_values("uid")
    turn = dropped.groupby("reason", sort=True).cumcount()  # each reason's 1st, then each one's 2nd, ...
    dropped = dropped.assign(turn=turn).sort_values(["turn", "reason", "uid"]).head(per_group)
    wanted = {**dict.fromkeys(kept["uid"], "kept"), **dict.fromkeys(dropped["uid"], "dropped")}
    thumbs = _thumbnails(pool, set(wanted))
    rows = []
    for frame_part, group in ((kept, "kept"), (dropped, "dropped")):
        for r in frame_part.itertuples():
            rows.append(
                {
                    "group": group,
                    "uid": r.uid,
                    "caption": r.caption,
                    "reason": r.reason if group == "dropped" else "",
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


INTENDED_USE = (
    "Research on data curation for CLIP-style image-text pre-training: training and comparing models "
    "on this set against others made from the same pool."
)
KNOWN_LIMITS = (
    "Web captions and images carry their sources' biases; selecting by a reference CLIP's score favours "
    "what that model already understands; captions are untrusted text."
)


def yaml_header(data: CardData, n: int, sources: dict[str, int]) -> str:
    """The Hugging Face card metadata, dumped by a YAML library (no Markdown escaping inside)."""
    licenses = [lic for lic, _ in data.crawl.get("licenses", [])]
    meta = {
        "pretty_name": data.name,
        "license": licenses[0] if len(licenses) == 1 else "other",
        "task_categories": ["zero-shot-image-classification", "image-to-text", "text-to-image"],
        "size_categories": [size_category(n)],
        "source_datasets": sorted(sources),
        "tags": ["clip", "image-text", "curated"],
        "configs": [{"config_name": data.name, "data_files": data.file}],
    }
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def _how(data: CardData, funnel: list[FunnelRow]) -> str:
    m = data.subset.manifest
    steps = " → ".join(r.stage for r in funnel)
    what = m.get("description") or m.get("how") or "a subset of the pool"
    return f"{what} ({steps})" if steps else str(what)


def _scored_by(data: CardData) -> list[str]:
    """The models behind the scores this set was selected on (every score stage if none is named)."""
    used = {
        str(d.get("score", "")).split(":")[0]
        for d in data.subset.manifest.get("decisions", [])
        if d.get("score")
    }
    chosen = {k: v for k, v in data.scorers.items() if k in used} or data.scorers
    out = []
    for stage, ident in chosen.items():
        weights = Path(str(ident.get("pretrained") or "")).name or "?"
        sha = f", sha256 {str(ident['sha256'])[:12]}" if ident.get("sha256") else ""
        out.append(f"{stage}: open_clip {ident.get('model', '?')} ({weights}{sha})")
    return out


def _crawl_text(recorded: dict[str, Any]) -> tuple[str, str]:
    crawl = {"files": [], "hosts": [], "n_hosts": 0, "licenses": [], **recorded}
    files = ", ".join(
        f"{f['file']} ({f['rows']:,} rows)" if f.get("rows") else f["file"] for f in crawl["files"]
    )
    hosts = ", ".join(f"{h} ({n:,})" for h, n in crawl["hosts"])
    more = (
        f" and {crawl['n_hosts'] - len(crawl['hosts'])} more hosts"
        if crawl["n_hosts"] > len(crawl["hosts"])
        else ""
    )
    origin = "; ".join(x for x in (files and f"crawl {files}", hosts and f"urls on {hosts}{more}") if x)
    lic = ", ".join(f"{lic} ({n:,})" for lic, n in crawl["licenses"])
    return origin or "not recorded", lic or "not recorded (images keep their owners' terms)"


def card_context(data: CardData, pool: Pool, figures: dict[str, bytes]) -> dict[str, Any]:
    for stage in data.stages:
        stage.check_balanced()
    n = len(data.subset)
    unique = data.subset.unique_count()
    sources = data.source_counts()
    funnel = card_funnel(data.stages, data.subset.manifest, n)
    results = [r for r in data.results if r.get("set") in (None, data.name)]
    hard = None
    if data.labels is not None:
        counts = data.labels["class_name"].value_counts()
        hard = {"classes": int(counts.size), "counts": counts.to_dict()}
    top = sorted(sources.items(), key=lambda kv: -kv[1])
    origin, licence = _crawl_text(data.crawl)
    summary = [
        ("What", f"a curated image-text set for CLIP pre-training, file {data.file}"),
        (
            "Size",
            f"{n:,} samples ({unique:,} distinct) from a pool of {len(data.frame):,} downloaded samples",
        ),
        (
            "Sources",
            ", ".join(f"{s} {100 * c / max(n, 1):.0f}%" for s, c in top[:4])
            + (f" and {len(top) - 4} more" if len(top) > 4 else ""),
        ),
        ("How it was made", _how(data, funnel)),
        ("Scored by", "; ".join(_scored_by(data)) or "no score model recorded"),
        ("Crawl", origin),
        ("Licence", licence),
        ("Intended use", INTENDED_USE),
        ("Known limits", KNOWN_LIMITS),
    ]
    return {
        "name": data.name,
        "file": data.file,
        "yaml_header": yaml_header(data, n, sources),
        "summary": summary,
        "n": n,
        "unique": unique,
        "pool_size": len(data.frame),
        "size_category": size_category(n),
        "sources": [{"source": s, "count": c, "share": c / max(n, 1)} for s, c in sources.items()],
        "funnel": funnel,
        "drop_reasons": first_reasons(data.frame, data.reason_columns()).most_common(),
        "duplicates": data.duplicate_groups(),
        "hardmatch": hard,
        "samples": sample_grid(data, pool),
        "figures": {k: base64.b64encode(v).decode() for k, v in figures.items()},
        "provenance": PROVENANCE_FILE,
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
    """Write ``out/README.md``, ``out/card.html``, the figures and ``provenance.json``; returns the cards.

    ``out`` may be a URL: each file is written whole (one PUT on object storage)."""
    out = storage.ensure_dir(out)
    figures = plots(data)
    for name, png in figures.items():
        atomic_write_bytes(out / name, png)
    ctx = card_context(data, pool, figures)
    atomic_write_text(out / PROVENANCE_FILE, json.dumps(data.subset.manifest, indent=2, default=str) + "\n")
    atomic_write_text(out / "README.md", _env(False).get_template("card.md.j2").render(**ctx))
    atomic_write_text(out / "card.html", _env(True).get_template("card.html.j2").render(**ctx))
    return out / "README.md", out / "card.html"
