"""The synthetic web crawl: plan who is what, then render it in parallel.

(Over 400 lines: the plan and its rendering share the pair records and the junk kinds, and split apart
they would each need the other's internals.)

Two steps. (1) A plan, drawn in this process from the master seed: every pair's source, junk
kind, class, caption class, language and, for duplicates, its original. (2) Rendering in a process
pool, one generator per pair derived from (seed, stream, index), so files are byte-identical
whatever the worker count; duplicates render in a second pass from their originals' files.
The tables built from plan and results are in :mod:`curation.synth.tables`. Over 400 lines
because the plan, the render pass and the duplicate pass share their per-pair task types here.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from curation.synth import captions, junk
from curation.synth.classes import Concept, get_concepts
from curation.synth.config import SourceConfig, SynthConfig
from curation.synth.overlay import OVERLAYS, overlay, plan_overlays
from curation.synth.pool import Workers, chunks
from curation.synth.rand import allocate_exact, item_rng, plan_rng
from curation.synth.render import (
    COLOR_NAMES,
    Drawn,
    encode,
    get_style,
    quality_for,
    render,
)

STREAM_PLAN, STREAM_CRAWL, STREAM_DUP = 1, 2, 3
STREAM_OVERLAY = 11  # drawn apart, so a crawl without overlays or skew is the same as before them
LANGS: tuple[str, ...] = ("en", *captions.FOREIGN_LANGS)
FORMATS: tuple[str, ...] = ("jpg", "png")
Advance = Callable[[int], None]


@dataclass(frozen=True)
class SourceSpec:
    """What a render worker needs to know about one source."""

    name: str
    style: str
    families: tuple[str, ...]
    family_p: tuple[float, ...]
    suffix_prob: float

    @classmethod
    def of(cls, name: str, src: SourceConfig) -> SourceSpec:
        fams = tuple(sorted(src.caption_families))
        w = np.array([src.caption_families[f] for f in fams], dtype=np.float64)
        return cls(name, src.style, fams, tuple((w / w.sum()).tolist()), src.suffix_prob)

    def family(self, rng: np.random.Generator) -> str:
        cum = np.cumsum(self.family_p)
        return self.families[min(len(cum) - 1, int(np.searchsorted(cum, rng.random(), side="right")))]


@dataclass(frozen=True)
class CrawlContext:
    """Run-wide settings shipped with every render task (small, picklable)."""

    seed: int
    web_dir: str
    classes: tuple[str, ...]
    sources: tuple[SourceSpec, ...]
    color_prior: float
    synonym_fraction: float
    foreign_name_prob: float
    tiny_max_side: int
    extreme_min_aspect: float


@dataclass
class CrawlPlan:
    """Column arrays, one entry per pair (index order is crawl order)."""

    source: np.ndarray  # index into sources
    junk: np.ndarray  # index into junk.KINDS
    label: np.ndarray  # class of the picture (or of the caption, where no picture is served)
    caption_label: np.ndarray  # class the caption is generated for (mismatched: another one)
    second: np.ndarray  # second class named and drawn (multi-class captions), else -1
    lang: np.ndarray  # index into LANGS
    fmt: np.ndarray  # index into FORMATS
    dup_of: np.ndarray  # index of the original, else -1
    paths: list[str] = field(default_factory=list)  # url path (what the crawl lists)
    files: list[str | None] = field(default_factory=list)  # file under web/ (None: nothing on disk)
    overlay: np.ndarray | None = None  # index into render.OVERLAYS (duplicates: their original's)

    def __len__(self) -> int:
        return len(self.source)


def _other(rng: np.random.Generator, labels: np.ndarray, k: int) -> np.ndarray:
    """A different class than ``labels`` for each entry, uniform over the others."""
    return (labels + rng.integers(1, k, size=len(labels))) % k


def make_plan(cfg: SynthConfig) -> CrawlPlan:
    """Decide every pair's source, junk kind, classes, language, format and original (no rendering)."""
    rng = plan_rng(cfg.seed, STREAM_PLAN)
    n, k = cfg.n_pairs, len(cfg.classes)
    names = list(cfg.sources)
    source = allocate_exact(n, np.array([cfg.sources[s].weight for s in names]), rng)
    kind = np.zeros(n, dtype=np.int8)
    for si, name in enumerate(names):
        idx = np.flatnonzero(source == si)
        kind[idx] = junk.allocate(len(idx), cfg.sources[name].junk, rng)
    if cfg.class_skew > 0:
        weights = 1.0 / np.arange(1, k + 1) ** cfg.class_skew
        label = rng.choice(k, size=n, p=weights / weights.sum())
    else:
        label = rng.integers(0, k, size=n)
    kind_name = np.asarray(junk.KINDS, dtype=object)[kind]

    caption_label = label.copy()
    mism = np.flatnonzero(kind_name == "mismatched")
    caption_label[mism] = _other(rng, label[mism], k)

    lang = np.zeros(n, dtype=np.int8)
    foreign = np.flatnonzero(kind_name == "foreign")
    lang[foreign] = rng.integers(1, len(LANGS), size=len(foreign))

    clean = np.flatnonzero(kind == 0)
    dup_of = np.full(n, -1, dtype=np.int64)
    dups = np.flatnonzero(np.isin(kind_name, list(junk.DUPLICATES)))
    if len(dups) and not len(clean):
        raise ValueError("duplicates need clean originals: lower the junk rates of some source")
    if len(dups):
        dup_of[dups] = rng.choice(clean, size=len(dups), replace=len(dups) > len(clean))
        label[dups] = label[dup_of[dups]]
        caption_label[dups] = label[dups]
    second = np.full(n, -1, dtype=np.int64)
    free = np.setdiff1d(clean, dup_of[dups])
    multi = rng.choice(free, size=min(len(free), round(cfg.multi_class_fraction * len(clean))), replace=False)
    second[multi] = _other(rng, label[multi], k)

    png_p = np.array([cfg.sources[s].png_fraction for s in names])[source]
    png_ok = np.isin(kind_name, ["clean", "mismatched", "unnamed", "foreign", "slow", "redirect"])
    fmt = ((rng.random(n) < png_p) & png_ok).astype(np.int8)
    fmt[dups] = np.where(kind_name[dups] == "exact_dup", fmt[dup_of[dups]], 0)

    plan = CrawlPlan(source, kind, label, caption_label, second, lang, fmt, dup_of)
    plan.paths, plan.files = _paths(cfg.seed, names, plan)
    plan.overlay = plan_overlays(cfg.overlay_fraction, plan.dup_of, plan_rng(cfg.seed, STREAM_OVERLAY))
    return plan


def _paths(seed: int, names: list[str], plan: CrawlPlan) -> tuple[list[str], list[str | None]]:
    """Url paths that look like a CDN's and files on disk (redirects: the file is the target)."""
    paths: list[str] = []
    files: list[str | None] = []
    for i in range(len(plan)):
        h = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).hexdigest()
        src, kind = names[plan.source[i]], junk.KINDS[plan.junk[i]]
        ext = FORMATS[plan.fmt[i]]
        direct = f"/{src}/{h[:2]}/{h[2:]}.{ext}"
        if kind == "redirect":
            paths.append(f"/{src}/go/{h[2:]}.{ext}")
            files.append(direct)
        else:
            paths.append(direct)
            files.append(None if kind in ("dead_404", "server_500") else direct)
    return paths, files


@dataclass(frozen=True)
class RenderTask:
    ctx: CrawlContext
    index: np.ndarray
    source: np.ndarray
    junk: np.ndarray
    label: np.ndarray
    caption_label: np.ndarray
    second: np.ndarray
    lang: np.ndarray
    fmt: np.ndarray
    files: list[str | None]
    overlay: np.ndarray


@dataclass
class Rendered:
    """Per-pair results of a chunk, as columns."""

    caption: list[str] = field(default_factory=list)
    caption_class: list[str | None] = field(default_factory=list)
    width: list[int | None] = field(default_factory=list)
    height: list[int | None] = field(default_factory=list)
    attrs: list[captions.Attributes | None] = field(default_factory=list)

    def add(
        self, caption: str, cls: str | None, size: tuple[int, int] | None, attrs: captions.Attributes | None
    ) -> None:
        self.caption.append(caption)
        self.caption_class.append(cls)
        self.width.append(size[0] if size else None)
        self.height.append(size[1] if size else None)
        self.attrs.append(attrs)

    def __len__(self) -> int:
        return len(self.caption)


def _write(web_dir: str, rel: str, data: bytes) -> None:
    """Write one served file (its directory was made by :func:`render_crawl`)."""
    with open(os.path.join(web_dir, rel.lstrip("/")), "wb") as f:
        f.write(data)


def _special_size(rng: np.random.Generator, ctx: CrawlContext, kind: str) -> tuple[int, int] | None:
    if kind != "extreme_aspect":
        return None
    short = int(rng.integers(28, 49))
    long = int(np.ceil(short * rng.uniform(ctx.extreme_min_aspect, ctx.extreme_min_aspect + 2.5)))
    return (long, short) if rng.random() < 0.7 else (short, long)


def _make_file(
    rng: np.random.Generator,
    ctx: CrawlContext,
    src: SourceSpec,
    kind: str,
    rel: str | None,
    fmt: str,
    concept: Concept,
    second: Concept | None,
    mark: tuple[str, np.random.Generator] | None = None,
) -> tuple[Drawn | None, tuple[int, int] | None]:
    """Write the file a url serves, if any; returns the drawing and the size of a decodable image."""
    if rel is None:
        return None, None
    if kind == "non_image":
        _write(ctx.web_dir, rel, junk.non_image_page(rng))
        return None, None
    style = get_style(src.style)
    size = _special_size(rng, ctx, kind)
    drawn = render(rng, style, concept, second=second, color_prior=ctx.color_prior, size=size)
    img = overlay(drawn.image, *mark) if mark is not None else drawn.image
    if kind == "tiny":
        f = int(rng.integers(8, ctx.tiny_max_side + 1)) / max(img.size)
        img = img.resize((max(4, round(img.width * f)), max(4, round(img.height * f))))
    data = encode(img, fmt, quality_for(rng, style))
    if kind == "corrupt":
        _write(ctx.web_dir, rel, junk.corrupt_bytes(data, rng))
        return drawn, None
    _write(ctx.web_dir, rel, data)
    return drawn, img.size


def _caption(
    rng: np.random.Generator,
    ctx: CrawlContext,
    src: SourceSpec,
    kind: str,
    concept: Concept,
    named: Concept,
    second: Concept | None,
    lang: str,
    attrs: captions.Attributes,
) -> tuple[str, str | None]:
    """The pair's caption and the class(es) it names ("a|b" when it names two)."""
    family = src.family(rng)
    if kind == "unnamed":
        return captions.unnamed(rng), None
    if kind == "foreign":
        text, names = captions.foreign(rng, concept, lang, ctx.foreign_name_prob)
        return text, concept.name if names else None
    if kind == "mismatched":
        attrs = captions.random_attributes(rng, COLOR_NAMES)
    text = captions.english(
        rng, named, attrs, family, second=second,
        synonym_fraction=ctx.synonym_fraction, suffix_prob=src.suffix_prob,
    )  # fmt: skip
    return text, named.name if second is None else f"{named.name}|{second.name}"


def render_chunk(task: RenderTask) -> Rendered:
    """Render the non-duplicate pairs of one chunk: write their files, return captions and sizes."""
    ctx = task.ctx
    concepts = get_concepts(ctx.classes)
    out = Rendered()
    for j, i in enumerate(task.index.tolist()):
        rng = item_rng(ctx.seed, STREAM_CRAWL, i)
        src = ctx.sources[task.source[j]]
        kind = junk.KINDS[task.junk[j]]
        concept = concepts[task.label[j]]
        second = concepts[task.second[j]] if task.second[j] >= 0 else None
        mark = (OVERLAYS[task.overlay[j]], item_rng(ctx.seed, STREAM_OVERLAY, i))
        drawn, size = _make_file(
            rng, ctx, src, kind, task.files[j], FORMATS[task.fmt[j]], concept, second, mark
        )
        attrs = (
            captions.Attributes(drawn.color, drawn.size, drawn.position, drawn.count)
            if drawn is not None
            else captions.random_attributes(rng, COLOR_NAMES)
        )
        named = concepts[task.caption_label[j]]
        text, cls = _caption(rng, ctx, src, kind, concept, named, second, LANGS[task.lang[j]], attrs)
        out.add(text, cls, size, attrs)
    return out


@dataclass(frozen=True)
class DupTask:
    ctx: CrawlContext
    index: np.ndarray
    source: np.ndarray
    kind: list[str]  # exact_dup, near_dup or semantic_dup
    label: np.ndarray
    files: list[str]
    original_files: list[str]
    original_captions: list[str]
    original_caption_classes: list[str | None]
    original_attrs: list[captions.Attributes]


def duplicate_chunk(task: DupTask) -> Rendered:
    """Copy (exact) or re-encode (near) each original under the duplicate's url; caption kept or new."""
    ctx = task.ctx
    concepts = get_concepts(ctx.classes)
    out = Rendered()
    for j, i in enumerate(task.index.tolist()):
        rng = item_rng(ctx.seed, STREAM_DUP, i)
        with open(os.path.join(ctx.web_dir, task.original_files[j].lstrip("/")), "rb") as f:
            data = f.read()
        if task.kind[j] == "near_dup":
            data, _variant = junk.near_duplicate(data, rng)
        elif task.kind[j] == "semantic_dup":
            data = junk.semantic_duplicate(data, rng)
        _write(ctx.web_dir, task.files[j], data)
        size = _image_size(data)
        if task.kind[j] != "semantic_dup" and rng.random() < 0.5:
            out.add(task.original_captions[j], task.original_caption_classes[j], size, task.original_attrs[j])
        else:
            src = ctx.sources[task.source[j]]
            concept = concepts[task.label[j]]
            text = captions.english(
                rng, concept, task.original_attrs[j], src.family(rng),
                synonym_fraction=ctx.synonym_fraction, suffix_prob=src.suffix_prob,
            )  # fmt: skip
            out.add(text, concept.name, size, task.original_attrs[j])
    return out


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def _context(cfg: SynthConfig, web_dir: Path) -> CrawlContext:
    return CrawlContext(
        seed=cfg.seed,
        web_dir=str(web_dir),
        classes=tuple(cfg.classes),
        sources=tuple(SourceSpec.of(n, s) for n, s in cfg.sources.items()),
        color_prior=cfg.color_prior,
        synonym_fraction=cfg.synonym_fraction,
        foreign_name_prob=cfg.foreign_name_prob,
        tiny_max_side=cfg.tiny_max_side,
        extreme_min_aspect=cfg.extreme_min_aspect,
    )


def render_crawl(
    cfg: SynthConfig, plan: CrawlPlan, web_dir: Path, workers: Workers, advance: Advance | None = None
) -> Rendered:
    """Render every pair of the plan into ``web_dir``; returns per-pair results in crawl order."""
    ctx = _context(cfg, web_dir)
    n = len(plan)
    for d in sorted({os.path.dirname(f) for f in plan.files if f is not None}):
        (web_dir / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    is_dup = plan.dup_of >= 0
    first = np.flatnonzero(~is_dup)
    overlays = plan.overlay if plan.overlay is not None else np.zeros(n, np.int8)

    def task(sel: np.ndarray) -> RenderTask:
        return RenderTask(
            ctx, sel, plan.source[sel], plan.junk[sel], plan.label[sel], plan.caption_label[sel],
            plan.second[sel], plan.lang[sel], plan.fmt[sel], [plan.files[i] for i in sel.tolist()],
            overlays[sel],
        )  # fmt: skip

    tasks = [task(first[a:b]) for a, b in chunks(len(first), cfg.chunk_size)]
    step = (lambda r: advance(len(r))) if advance else None
    cols: dict[str, list] = {k: [None] * n for k in ("caption", "caption_class", "width", "height", "attrs")}
    for t, r in zip(tasks, workers.map(render_chunk, tasks, step), strict=True):
        _scatter(cols, t.index, r)

    dups = np.flatnonzero(is_dup)
    dup_kind = [junk.KINDS[k] for k in plan.junk[dups].tolist()]

    def dup_task(a: int, b: int) -> DupTask:
        sel, orig = dups[a:b], plan.dup_of[dups[a:b]].tolist()
        return DupTask(
            ctx, sel, plan.source[sel], dup_kind[a:b], plan.label[sel], [plan.files[i] for i in sel.tolist()],
            [plan.files[o] for o in orig], [cols["caption"][o] for o in orig],
            [cols["caption_class"][o] for o in orig], [cols["attrs"][o] for o in orig],
        )  # fmt: skip

    dtasks = [dup_task(a, b) for a, b in chunks(len(dups), cfg.chunk_size)]
    for t, r in zip(dtasks, workers.map(duplicate_chunk, dtasks, step), strict=True):
        _scatter(cols, t.index, r)
    return Rendered(cols["caption"], cols["caption_class"], cols["width"], cols["height"], cols["attrs"])


def _scatter(cols: dict[str, list], index: np.ndarray, r: Rendered) -> None:
    for j, i in enumerate(index.tolist()):
        cols["caption"][i] = r.caption[j]
        cols["caption_class"][i] = r.caption_class[j]
        cols["width"][i] = r.width[j]
        cols["height"][i] = r.height[j]
        cols["attrs"][i] = r.attrs[j]
