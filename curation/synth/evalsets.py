"""Held-out sets beside the crawl: the evaluation suite, the clean seed set, the ImageNet analogue.

(Over 400 lines: the suite, the seed set and the ImageNet analogue share their layout writers and random
streams.)

All three draw from their own random streams, so none shares an image with the crawl or another
set. The suite follows CLIP_benchmark's webdataset layout; the seed set and ImageNet analogue are
training shards (``00000.tar`` + ``sizes.json``) that the trainer reads directly.
"""

from __future__ import annotations

import html
import io
import json
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from curation.core.io import atomic_path, atomic_write_json, atomic_write_parquet, atomic_write_text
from curation.core.uid import compute_uid
from curation.synth import captions
from curation.synth.classes import Concept, get_concepts
from curation.synth.config import ImagenetConfig, SynthConfig
from curation.synth.crawl import SourceSpec
from curation.synth.pool import Workers, chunks
from curation.synth.rand import allocate_exact, item_rng, plan_rng
from curation.synth.render import encode, get_style, quality_for, render

DATASET_TYPE_FILE = "dataset_type.txt"  # CLIP_benchmark's webdataset metadata: "retrieval" or absent
STREAM_SUITE = {"synth_id": 10, "synth_sketch": 11, "synth_style": 12, "synth_v2": 13, "synth_retrieval": 14}
STREAM_SEED, STREAM_IMAGENET, STREAM_IMAGENET_META = 20, 30, 31
Advance = Callable[[int], None]
Sample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes})

TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "a drawing of a {c}.",
    "a {c} icon.",
    "clipart of a {c}.",
    "a sketch of a {c}.",
    "a {c} on a plain background.",
    "a small {c}.",
    "a large {c}.",
    "an image showing a {c}.",
)


@dataclass(frozen=True)
class SetSpec:
    """One labelled set: which styles, whether captions are written, and its random stream."""

    name: str
    stream: int
    style_of: Callable[[SourceSpec], str] | None  # style per item from its source; None: fixed_style
    fixed_style: str | None = None
    role: str = "shift"
    caption: bool = False


SUITE: tuple[SetSpec, ...] = (
    SetSpec("synth_id", STREAM_SUITE["synth_id"], lambda s: s.style, role="in_distribution"),
    SetSpec("synth_sketch", STREAM_SUITE["synth_sketch"], None, "sketch"),
    SetSpec("synth_style", STREAM_SUITE["synth_style"], None, "pattern"),
    SetSpec("synth_v2", STREAM_SUITE["synth_v2"], lambda s: f"{s.style}_v2"),
    SetSpec(
        "synth_retrieval", STREAM_SUITE["synth_retrieval"], lambda s: s.style, role="retrieval", caption=True
    ),
)


@dataclass(frozen=True)
class LabelledTask:
    seed: int
    stream: int
    classes: tuple[str, ...]
    index: np.ndarray
    labels: np.ndarray
    styles: list[str]
    sources: list[SourceSpec] | None  # for captions: the source whose habits to imitate
    color_prior: float
    synonym_fraction: float


@dataclass
class LabelledBatch:
    images: list[bytes] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def render_labelled(task: LabelledTask) -> LabelledBatch:
    """Render clean, correctly labelled images (and true captions where asked)."""
    concepts = get_concepts(task.classes)
    out = LabelledBatch()
    for j, i in enumerate(task.index.tolist()):
        rng = item_rng(task.seed, task.stream, i)
        style = get_style(task.styles[j])
        concept = concepts[task.labels[j]]
        drawn = render(rng, style, concept, color_prior=task.color_prior)
        out.images.append(encode(drawn.image, "jpg", quality_for(rng, style)))
        if task.sources is None:
            out.captions.append(None)
            continue
        src = task.sources[j]
        attrs = captions.Attributes(drawn.color, drawn.size, drawn.position, drawn.count)
        out.captions.append(
            captions.english(
                rng, concept, attrs, src.family(rng), synonym_fraction=task.synonym_fraction, suffix_prob=0.0
            )
        )
    return out


def _source_specs(cfg: SynthConfig) -> list[SourceSpec]:
    return [SourceSpec.of(n, s) for n, s in cfg.sources.items()]


def _render_set(
    cfg: SynthConfig,
    stream: int,
    labels: np.ndarray,
    styles: list[str],
    sources: list[SourceSpec] | None,
    workers: Workers,
    advance: Advance | None,
) -> LabelledBatch:
    tasks = [
        LabelledTask(
            cfg.seed, stream, tuple(cfg.classes), np.arange(a, b), labels[a:b], styles[a:b],
            None if sources is None else sources[a:b], cfg.color_prior, cfg.synonym_fraction,
        )
        for a, b in chunks(len(labels), cfg.chunk_size)
    ]  # fmt: skip
    out = LabelledBatch()
    step = (lambda r: advance(len(r))) if advance else None
    for r in workers.map(render_labelled, tasks, step):
        out.images += r.images
        out.captions += r.captions
    return out


def _mix(cfg: SynthConfig, rng: np.random.Generator, n: int) -> list[SourceSpec]:
    """Sources for ``n`` items in exactly the crawl's proportions, shuffled."""
    specs = _source_specs(cfg)
    idx = allocate_exact(n, np.array([cfg.sources[s.name].weight for s in specs]), rng)
    return [specs[i] for i in idx.tolist()]


def _balanced(rng: np.random.Generator, k: int, per_class: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(k), per_class))


def write_shards(
    directory: Path, samples: Iterable[Sample], shard_size: int, name: Callable[[int], str]
) -> dict[str, int]:
    """Write webdataset tars (``KEY.EXT`` members), reproducibly and each one atomically.

    Plain ``tarfile`` with fixed mtime, owner and mode, so two runs give identical bytes (and no
    torch import, which ``webdataset``'s writer would pull in). Returns {shard name: samples}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    it = iter(samples)
    pending = next(it, None)
    shard = 0
    while pending is not None:
        fname, count = name(shard), 0
        with (
            atomic_path(directory / fname) as tmp,
            tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            while pending is not None and count < shard_size:
                key, members = pending
                for ext in sorted(members):
                    data = members[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    info.uname = info.gname = "synth"
                    tar.addfile(info, io.BytesIO(data))
                count += 1
                pending = next(it, None)
        sizes[fname] = count
        shard += 1
    return sizes


def _b(s: str) -> bytes:
    return s.encode("utf-8")


def build_suite(
    cfg: SynthConfig, out: Path, workers: Workers, advance: Advance | None = None
) -> dict[str, int]:
    """Write ``out/suite``: four classification sets and one retrieval set, plus ``suite.yaml``."""
    k = len(cfg.classes)
    sizes = {}
    entries = []
    for spec in SUITE:
        rng = plan_rng(cfg.seed, spec.stream)
        if spec.caption:
            n = cfg.suite.retrieval_pairs
            labels = rng.integers(0, k, size=n)
        else:
            labels = _balanced(rng, k, cfg.suite.per_class)
        srcs = _mix(cfg, rng, len(labels))
        styles = [spec.style_of(s) if spec.style_of else str(spec.fixed_style) for s in srcs]
        batch = _render_set(
            cfg, spec.stream, labels, styles, srcs if spec.caption else None, workers, advance
        )
        root = out / "suite" / spec.name

        def samples(batch: LabelledBatch = batch, labels: np.ndarray = labels) -> Iterable[Sample]:
            for i, (img, cap) in enumerate(zip(batch.images, batch.captions, strict=True)):
                s = {"jpg": img, "cls": _b(str(int(labels[i])))}
                if cap is not None:
                    s["txt"] = _b(cap)
                yield f"{i:06d}", s

        shard_sizes = write_shards(root / "test", samples(), cfg.suite.shard_size, lambda i: f"{i}.tar")
        atomic_write_text(root / "test" / "nshards.txt", f"{len(shard_sizes)}\n")
        atomic_write_text(root / "classnames.txt", "".join(f"{c}\n" for c in cfg.classes))
        atomic_write_text(
            root / "zeroshot_classification_templates.txt", "".join(f"{t}\n" for t in TEMPLATES)
        )
        if spec.caption:  # CLIP_benchmark's loader (and ours, given the folder alone) reads the type here
            atomic_write_text(root / DATASET_TYPE_FILE, "retrieval\n")
        sizes[spec.name] = len(labels)
        entries.append({"name": spec.name, "path": spec.name, "role": spec.role})
    suite_yaml = yaml.safe_dump({"name": "synthetic", "test_sets": entries}, sort_keys=False)
    atomic_write_text(out / "suite" / "suite.yaml", suite_yaml)
    return sizes


def _training_shards(
    directory: Path, samples: Iterable[Sample], shard_size: int, stats: dict
) -> dict[str, int]:
    sizes = write_shards(directory, samples, shard_size, lambda i: f"{i:05d}.tar")
    atomic_write_json(directory / "sizes.json", sizes)
    atomic_write_json(directory / "stats.json", stats)
    return sizes


def build_seed(cfg: SynthConfig, out: Path, workers: Workers, advance: Advance | None = None) -> int:
    """Write ``out/seed``: clean pairs (true captions, crawl styles) for the reference CLIP."""
    rng = plan_rng(cfg.seed, STREAM_SEED)
    n = cfg.seed_set.n
    labels = rng.integers(0, len(cfg.classes), size=n)
    srcs = _mix(cfg, rng, n)
    batch = _render_set(cfg, STREAM_SEED, labels, [s.style for s in srcs], srcs, workers, advance)

    def samples() -> Iterable[Sample]:
        for i, (img, cap) in enumerate(zip(batch.images, batch.captions, strict=True)):
            lab = int(labels[i])
            meta = {
                "uid": compute_uid(f"/seed/{i:06d}.jpg", cap),
                "source": "seed",
                "style": srcs[i].style,
                "label": lab,
                "class_name": cfg.classes[lab],
            }
            yield f"{i:06d}", {"jpg": img, "txt": _b(str(cap)), "json": _b(json.dumps(meta, sort_keys=True)),
                               "cls": _b(str(lab))}  # fmt: skip

    per_class = np.bincount(labels, minlength=len(cfg.classes))
    stats = {"n": n, "per_class": {c: int(v) for c, v in zip(cfg.classes, per_class, strict=True)}}
    _training_shards(out / "seed", samples(), cfg.seed_set.shard_size, stats)
    return n


def wnid(label: int) -> str:
    """A WordNet-id-looking folder name per class (ImageNet's image ids are ``<wnid>_<n>``)."""
    return f"n{9_100_000 + 137 * label:08d}"


def build_imagenet(
    cfg: SynthConfig, out: Path, workers: Workers, advance: Advance | None = None
) -> dict[str, int]:
    """Write ``out/imagenet``: labelled training shards, ``index.parquet``, ``flickr_meta.parquet``."""
    ic = cfg.imagenet
    rng = plan_rng(cfg.seed, STREAM_IMAGENET)
    k = len(cfg.classes)
    labels = _balanced(rng, k, ic.per_class)
    n = len(labels)
    if ic.styles is None:
        styles = [s.style for s in _mix(cfg, rng, n)]
    else:
        names = sorted(ic.styles)
        idx = allocate_exact(n, np.array([ic.styles[s] for s in names]), rng)
        styles = [names[i] for i in idx.tolist()]
    batch = _render_set(cfg, STREAM_IMAGENET, labels, styles, None, workers, advance)
    concepts = get_concepts(cfg.classes)
    seen: dict[int, int] = {}
    image_ids = []
    for lab in labels.tolist():
        seen[lab] = seen.get(lab, 0) + 1
        image_ids.append(f"{wnid(lab)}_{seen[lab]}")

    def samples() -> Iterable[Sample]:
        for i, img in enumerate(batch.images):
            lab = int(labels[i])
            meta = {"image_id": image_ids[i], "label": lab, "class_name": cfg.classes[lab]}
            yield f"{i:06d}", {"jpg": img, "cls": _b(str(lab)), "txt": _b(captions.plain(concepts[lab])),
                               "json": _b(json.dumps(meta, sort_keys=True))}  # fmt: skip

    root = out / "imagenet"
    per_class = {c: int(ic.per_class) for c in cfg.classes}
    _training_shards(root / "train", samples(), ic.shard_size, {"n": n, "per_class": per_class})
    # Label index -> name, next to the shards: what the supervised baselines train against.
    atomic_write_text(root / "classnames.txt", "".join(f"{c}\n" for c in cfg.classes))
    index, meta = flickr_tables(cfg, labels, image_ids)
    atomic_write_parquet(root / "index.parquet", index)
    atomic_write_parquet(root / "flickr_meta.parquet", meta)
    return {"train": n, "index_rows": index.num_rows, "flickr_meta_rows": meta.num_rows}


# ---------------------------------------------------------------- YFCC100M-like Flickr metadata

_TITLES_NAMED = (
    "My {obj}",
    "{Color} {obj}",
    "{obj} #{n}",
    "{Obj} & me",
    "the {obj} again",
    "{Obj} (explored)",
)
_TITLES_OTHER = ("IMG_{n4}", "DSC_{n4}", "Untitled", "P{n4}", "summer {year}", "photo")
_DESCS_NAMED = (
    'My {color} {obj}, taken with my new camera. <a href="http://www.flickr.com/groups/{n}/">Group pool</a>',
    'I love this "{obj}"!<br />Shot on a rainy afternoon.',
    "Another {obj} for the collection <3 <b>{year}</b>",
    "Found {a_obj} on the way home & had to take a picture.",
)
_DESCS_OTHER = (
    "Taken during our trip in {year}.",
    'Uploaded with <a href="http://www.flickr.com/tools/">Flickr Uploadr</a>',
    "No comment... :)<br />",
    "Please do not use without permission & credit.",
)
_TAGS_OTHER = (
    "vacation",
    "summer",
    "nikon",
    "canon eos",
    "family",
    "2000s",
    "art",
    "macro",
    "blue sky",
    "home",
)


def _fill(rng: np.random.Generator, template: str, concept: Concept) -> str:
    return template.format(
        obj=concept.name,
        a_obj=f"{captions.article(concept.name)} {concept.name}", Obj=concept.name.capitalize(),
        color=_pick(rng, ("red", "blue", "little", "old", "shiny")), Color=_pick(rng, ("Red", "Blue", "Big")),
        n=int(rng.integers(2, 9999)), n4=int(rng.integers(1000, 9999)), year=int(rng.integers(2004, 2015)),
    )  # fmt: skip


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _markup(rng: np.random.Generator, text: str, html_p: float) -> str:
    """YFCC fields are HTML-escaped, some with markup kept: escape entities, or strip the tags."""
    if rng.random() < html_p:
        return html.escape(text, quote=True) if rng.random() < 0.5 else text
    return text.replace("<br />", " ").replace("<b>", "").replace("</b>", "").split(" <a ")[0]


MetaFields = tuple[str | None, str | None, str | None]  # title, description, tags


def _meta_row(rng: np.random.Generator, concept: Concept, ic: ImagenetConfig) -> MetaFields:
    named = rng.random() < ic.names_class
    title = _fill(rng, _pick(rng, _TITLES_NAMED if named and rng.random() < 0.7 else _TITLES_OTHER), concept)
    desc = _fill(rng, _pick(rng, _DESCS_NAMED if named and rng.random() < 0.6 else _DESCS_OTHER), concept)
    tags = [t for t in _TAGS_OTHER if rng.random() < 0.25]
    if named and rng.random() < 0.8:
        tags.insert(int(rng.integers(len(tags) + 1)), concept.name)
    tag_str = ",".join(t.replace(" ", "+") for t in tags)  # YFCC: comma-separated, url-encoded tags
    title, desc = _markup(rng, title, ic.html), _markup(rng, desc, ic.html)
    return tuple(None if rng.random() < ic.null_field else v for v in (title, desc, tag_str or None))  # type: ignore[return-value]


def flickr_tables(cfg: SynthConfig, labels: np.ndarray, image_ids: list[str]) -> tuple[pa.Table, pa.Table]:
    """The index (image -> Flickr id, some missing) and the metadata (some rows unmatched)."""
    ic = cfg.imagenet
    rng = plan_rng(cfg.seed, STREAM_IMAGENET_META)
    concepts = get_concepts(cfg.classes)
    n = len(labels)
    n_orphans = round(ic.meta_orphans * n)
    ids = 2_000_000_000 + np.cumsum(rng.integers(1, 50_000, size=n + n_orphans))
    ids = rng.permutation(ids)
    flickr_id: list[int | None] = ids[:n].tolist()
    not_flickr = rng.random(n) < 0.03  # not every ImageNet image came from Flickr
    missing = (rng.random(n) < ic.meta_missing) & ~not_flickr  # photo deleted: id without metadata
    rows: list[tuple[int, str | None, str | None, str | None]] = []
    for i in range(n):
        if not_flickr[i]:
            flickr_id[i] = None
        elif not missing[i]:
            rows.append((int(ids[i]), *_meta_row(rng, concepts[int(labels[i])], ic)))
    for pid in ids[n:].tolist():
        rows.append((int(pid), *_meta_row(rng, concepts[int(rng.integers(len(concepts)))], ic)))
    rows.sort(key=lambda r: r[0])
    index = pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "label": pa.array(labels.tolist(), pa.int32()),
            "class_name": pa.array([cfg.classes[x] for x in labels.tolist()], pa.string()),
            "flickr_id": pa.array(flickr_id, pa.int64()),
        }
    )
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    meta = pa.table(
        {
            "photo_id": pa.array(cols[0], pa.int64()),
            "title": pa.array(cols[1], pa.string()),
            "description": pa.array(cols[2], pa.string()),
            "tags": pa.array(cols[3], pa.string()),
        }
    )
    return index, meta
