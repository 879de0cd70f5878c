"""Generate everything the embedded default needs, into one directory, all or nothing.

The output is built in a sibling temp directory and renamed into place at the end, so an
interrupted run never leaves a half-written crawl that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from curation import __version__
from curation.core.io import atomic_write_json, atomic_write_text
from curation.core.progress import bar
from curation.synth import evalsets
from curation.synth.config import SynthConfig
from curation.synth.crawl import make_plan, render_crawl
from curation.synth.pool import Workers
from curation.synth.tables import crawl_counts, crawl_tables, write_crawl

log = logging.getLogger(__name__)
GENERATOR = "curation.synth/1"


def generate(cfg: SynthConfig, out: str | Path, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Write the crawl, web files, faults, suite, seed set and ImageNet analogue under ``out``.

    Returns the manifest. Output bytes depend on the config and seed only (not on ``workers``).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        started = time.perf_counter()
        with _progress(progress) as bar, Workers(cfg.workers) as workers:
            manifest = _generate_into(cfg, tmp, workers, _tracker(bar))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        log.info("synthetic crawl: %d pairs in %s (%.1f s)", cfg.n_pairs, out, time.perf_counter() - started)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


Track = Callable[[str, int], Callable[[int], None] | None]


def _generate_into(cfg: SynthConfig, out: Path, workers: Workers, track: Track) -> dict:
    plan = make_plan(cfg)
    rendered = render_crawl(cfg, plan, out / "web", workers, track("crawl", len(plan)))
    tables = crawl_tables(cfg, plan, rendered)
    write_crawl(out, tables)
    if cfg.overlay_fraction > 0:
        write_overlay_labels(out / "labels" / "overlay.txt", tables.ground_truth)
    _write_web_extras(out / "web")
    atomic_write_text(out / "classnames.txt", "".join(f"{c}\n" for c in cfg.classes))
    k = len(cfg.classes)
    n_suite = (len(evalsets.SUITE) - 1) * k * cfg.suite.per_class + cfg.suite.retrieval_pairs
    suite = evalsets.build_suite(cfg, out, workers, track("suite", n_suite))
    seed_n = evalsets.build_seed(cfg, out, workers, track("seed set", cfg.seed_set.n))
    imagenet = evalsets.build_imagenet(cfg, out, workers, track("imagenet", k * cfg.imagenet.per_class))
    manifest = {
        "generator": GENERATOR,
        "version": __version__,
        "seed": cfg.seed,
        "base_url": cfg.base_url,
        "uid": "compute_uid(url path relative to the server root, caption)",
        "config": cfg.model_dump(mode="json", exclude={"workers", "chunk_size"}),
        "classes": list(cfg.classes),
        "crawl": crawl_counts(cfg, plan),
        "suite": suite,
        "seed_set": seed_n,
        "imagenet": imagenet,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def write_overlay_labels(path: Path, ground_truth: pa.Table) -> None:
    """The uids whose picture carries a text banner or watermark, one a line: the positives
    ``curate train-head`` takes, as a person labelling a pool would give them."""
    marked = pc.is_in(ground_truth["overlay"], pa.array(["text", "watermark"]))
    uids = ground_truth["uid"].filter(pc.fill_null(marked, False)).to_pylist()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(f"{u}\n" for u in uids))


def _write_web_extras(web: Path) -> None:
    """A front page and robots.txt: the few non-image files any site serves."""
    atomic_write_text(web / "robots.txt", "User-agent: *\nAllow: /\n")
    atomic_write_text(
        web / "index.html",
        "<!DOCTYPE html>\n<html><head><title>synthetic web</title></head>"
        "<body><p>Synthetic crawl served by curate serve.</p></body></html>\n",
    )


def _progress(enabled: bool) -> Progress | nullcontext:
    if not enabled:
        return nullcontext()
    return bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _tracker(bar: Progress | None) -> Track:
    def track(desc: str, total: int) -> Callable[[int], None] | None:
        if bar is None:
            return None
        task_id = bar.add_task(desc, total=total)
        return lambda n: bar.advance(task_id, n)

    return track
