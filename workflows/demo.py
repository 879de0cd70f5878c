"""The embedded default, end to end: the sequence of ``curate`` commands a user would run.

``curate demo`` generates the synthetic crawl, serves it on 127.0.0.1, downloads it with
img2dataset, trains the reference CLIP on the clean seed set, scores, filters, selects, builds
hardmatch and mixed sets, runs the default ablation and writes a card per curated set. Each step
is the real subcommand (printed, so it can be rerun by hand); a step that finished is skipped on
the next run, and the commands themselves resume shard by shard.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from curation.core.config import CONF_DIR
from curation.core.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One ``curate`` command of the demo; ``needs_server`` keeps the crawl served while it runs."""

    name: str
    argv: list[str]
    needs_server: bool = False
    before: Callable[[], None] | None = None


@dataclass
class DemoLayout:
    out: Path
    synth: Path = field(init=False)
    pool: Path = field(init=False)
    reference: Path = field(init=False)
    sets: Path = field(init=False)
    ablation: Path = field(init=False)
    cards: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.synth = self.out / "synth"
        self.pool = self.out / "pool"
        self.reference = self.out / "reference"
        self.sets = self.out / "sets"
        self.ablation = self.out / "ablation"
        self.cards = self.out / "cards"

    @property
    def local_crawl(self) -> Path:
        return self.out / "crawl_local.parquet"

    @property
    def ref_eval(self) -> Path:
        return self.reference / "eval"

    def marker(self, step: str) -> Path:
        return self.out / ".demo" / f"{step}.done"


def demo_steps(lay: DemoLayout, n_pairs: int) -> list[Step]:
    conf = CONF_DIR
    score = "clip_score_ref"
    return [
        Step("synth", ["synth", str(lay.synth), "--set", f"n_pairs={n_pairs}"]),
        Step(
            "download",
            [
                "download",
                str(lay.local_crawl),
                "--out",
                str(lay.pool),
                "-c",
                str(conf / "download" / "synthetic.yaml"),
            ],
            needs_server=True,
        ),
        Step("reference_model", ["reference-model", str(lay.synth / "seed"), "--out", str(lay.reference)]),
        Step(  # how good the filter model is: zero-shot on the same suite as the ablation's cells
            "reference_eval",
            ["evaluate", str(lay.reference), "--suite", str(lay.synth / "suite"), "--out", str(lay.ref_eval)],
        ),
        Step(
            "score",
            [
                "score",
                str(lay.pool),
                "-c",
                str(conf / "score" / "tiny.yaml"),
                "--model",
                "tiny-rn-32",
                "--pretrained",
                str(lay.reference / "checkpoint.pt"),
                "--column",
                score,
            ],
        ),
        Step("copydesc", ["copydesc", str(lay.pool)]),  # the descriptor near dedup searches
        Step("filter", ["filter", str(lay.pool), "-c", str(conf / "filters" / "demo.yaml")]),
        Step(
            "hardmatch",
            [
                "hardmatch",
                str(lay.pool),
                "--out",
                str(lay.sets / "hardmatch"),
                "--classes",
                str(lay.synth / "classnames.txt"),
                "--synonyms",
                str(conf / "hardmatch" / "synth_synonyms.yaml"),
            ],
        ),
        Step(
            "ablation",
            [
                "ablate",
                str(conf / "ablation" / "demo.yaml"),
                "-o",
                str(lay.ablation),
                "--set",
                f"pool={lay.pool}",
                "--set",
                f"suite={lay.synth / 'suite'}",
                "--set",
                f"score={score}:{score}",
                "--set",
                f"baselines.shards={lay.synth / 'imagenet' / 'train'}",
                "--set",
                f"named_sets.hardmatch={lay.sets / 'hardmatch' / 'hardmatch.npy'}",
            ],
        ),
    ]


@contextmanager
def served_crawl(lay: DemoLayout) -> Iterator[None]:
    """Serve the synthetic web on a free 127.0.0.1 port and point the crawl's urls at it."""
    from curation.synth.server import serve
    from curation.synth.tables import rebase_urls

    with serve(lay.synth, "127.0.0.1", 0) as server:
        crawl = rebase_urls(pq.read_table(lay.synth / "crawl.parquet"), server.base_url)
        pq.write_table(crawl, lay.local_crawl)
        log.info("serving the synthetic crawl at %s", server.base_url)
        yield


Invoke = Callable[[list[str]], int | None]  # runs one curate subcommand, returns its exit code


def run_demo(out: Path, n_pairs: int = 10_000, invoke: Invoke | None = None) -> dict:
    """Run (or resume) every step; returns the per-step timings that are also written to OUT."""
    lay = DemoLayout(out)
    lay.out.mkdir(parents=True, exist_ok=True)
    run = invoke or _invoke_cli
    timings_path = lay.out / "timings.json"
    timings: dict[str, float] = read_json(timings_path) if timings_path.exists() else {}
    commands = []
    for step in demo_steps(lay, n_pairs):
        commands.append("curate " + shlex.join(step.argv))
        if lay.marker(step.name).exists():
            log.info("[demo] %s: done in an earlier run, skipped", step.name)
            continue
        log.info("[demo] %s: curate %s", step.name, shlex.join(step.argv))
        started = time.perf_counter()
        server: AbstractContextManager[None] = served_crawl(lay) if step.needs_server else nullcontext()
        with server:
            code = run(step.argv)
        if code:  # later steps read this one's output: stop, and leave it unmarked so a rerun resumes it
            raise DemoStepFailed(f"step {step.name} failed (exit code {code}); rerun the demo to resume it")
        timings[step.name] = round(time.perf_counter() - started, 1)
        atomic_write_json(lay.marker(step.name), {"seconds": timings[step.name]})
        atomic_write_json(timings_path, timings)
        log.info("[demo] %s: %.1f s", step.name, timings[step.name])
    atomic_write_text(lay.out / "commands.sh", "#!/usr/bin/env bash\nset -e\n" + "\n".join(commands) + "\n")
    return timings


class DemoStepFailed(RuntimeError):
    """A step's command returned a non-zero exit code."""


def _invoke_cli(argv: list[str]) -> int | None:
    """Run a ``curate`` subcommand in this process; its exit code (click returns it, not raises it)."""
    from pipelines.app import app

    return app(argv, standalone_mode=False)


def write_cards(out: Path) -> dict[str, float]:
    """A dataset card per curated set of the ablation (with its downstream results)."""
    from curation.cards.card import write_card
    from curation.cards.data import load_card_data
    from curation.core.pool import Pool

    lay = DemoLayout(out)
    started = time.perf_counter()
    subsets = sorted((lay.ablation / "sets").glob("*/subset.npy")) + sorted(lay.sets.glob("*/*.npy"))
    for subset in subsets:
        name = subset.parent.name
        # Downstream results of a set: the evaluations of every ablation cell trained on it.
        results = sorted((lay.ablation / "cells").glob(f"{name}__*/eval/results.jsonl"))
        data = load_card_data(subset, lay.pool, results)
        write_card(data, Pool(lay.pool), lay.cards / name)
    return {"cards": round(time.perf_counter() - started, 1)}
