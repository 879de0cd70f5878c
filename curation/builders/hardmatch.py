"""YFCC-hardmatch: label web captions with the class they name, by substring matching.

Fang et al. (2022) built YFCC-hardmatch by keeping the YFCC images whose caption contains an
ImageNet class name and using that class as the label; a classifier trained on it ("NoCLIP") is
as robust as CLIP. Here a caption names a class when one of the class's surface forms (name,
alternatives, synonyms, plurals: :mod:`curation.builders.classvocab`) occurs in it as whole words,
case-folded. Matching is one Aho-Corasick automaton run over a whole batch of captions joined into
one string, taking the longest form at each place ("snow leopard", not "leopard"); a caption that
names exactly one class gets it as label, one that names several is ``ambiguous`` (dropped by
default, or labelled with the class named first).

The job writes one match table per shard (runner markers, any engine); :func:`finalize` gathers
them into the labelled subset, ``labels.parquet`` and the report. The input, the output folder and
the ground truth may be local paths or URLs (:mod:`curation.core.storage`).

Rows a crawl gets wrong are dropped one by one with a reason, never by failing a shard: a null or
non-hex uid is ``bad_uid``; a uid seen again (in any shard) is ``duplicate_uid`` for every row after
the first, whose decision stands, and the report counts the repeats whose caption gave another
decision (``conflicting_uids``). The funnel is recounted after that, so it balances per row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.builders.captiontext import TextBlock, normalized_blocks
from curation.builders.classvocab import Vocabulary, load_class_names, load_synonyms
from curation.builders.hardmatch_eval import evaluate
from curation.builders.hardmatch_report import build_report, report_markdown
from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.io import atomic_write_json, atomic_write_parquet, atomic_write_text, read_json
from curation.core.rowsource import RowSource
from curation.core.runner import ShardJob
from curation.core.stats import StageStats, count_verdicts, merge
from curation.core.subset import Subset
from curation.core.uid import hex_column_to_array
from curation.engines import Engine, JobReport, run_job

log = logging.getLogger(__name__)

STAGE = "hardmatch"
NO_LABEL = -1


class HardmatchError(ValueError):
    """A hardmatch run that cannot go on as asked."""


class HardmatchConfig(ConfigModel):
    classes: str = "imagenet"  # "imagenet" (open_clip's names) or a class-name file
    synonyms: storage.Location | None = None  # YAML: class name -> [synonyms]
    plurals: bool = True
    parenthetical: Literal["drop", "keep"] = "drop"
    ambiguous: Literal["drop", "first"] = "drop"
    batch_size: int = 131072


@dataclass
class BatchMatches:
    """Per row of a batch: the classes its caption names, and the decision."""

    n_classes: np.ndarray  # distinct classes named
    matched: pa.ListArray  # those classes (sorted)
    first_label: np.ndarray  # class of the first (leftmost) match, NO_LABEL if none
    first_form: np.ndarray  # form id of the first match, -1 if none
    empty: np.ndarray  # caption empty after normalisation


class ClassMatcher:
    """One compiled automaton over every surface form of every class."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.automaton = ahocorasick.Automaton()
        for i, form in enumerate(vocab.forms):
            self.automaton.add_word(f" {form} ", i)
        self.automaton.make_automaton()
        self.pattern_len = np.array([len(f) + 2 for f in vocab.forms], dtype=np.int64)

    @classmethod
    def from_config(cls, cfg: HardmatchConfig) -> ClassMatcher:
        names = load_class_names(cfg.classes)
        synonyms = load_synonyms(cfg.synonyms, names)
        return cls(Vocabulary.build(names, synonyms, cfg.plurals, cfg.parenthetical))

    def _block_hits(self, block: TextBlock) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, start, form) of the matches in one block, nested matches removed."""
        hits = np.fromiter(
            (x for hit in self.automaton.iter(block.text) for x in hit), dtype=np.int64
        ).reshape(-1, 2)  # (end position, form id) of every occurrence, overlapping ones too
        forms = hits[:, 1]
        starts = hits[:, 0] - self.pattern_len[forms] + 1
        ends = hits[:, 0]
        order = np.lexsort((-ends, starts))  # by start, the longer first
        starts, ends, forms = starts[order], ends[order], forms[order]
        prev_max_end = np.maximum.accumulate(np.concatenate([[-1], ends[:-1]]))
        outer = ends > prev_max_end  # not inside an earlier-starting (or longer) match
        # adjacent words share one padding space, so "dog cat" keeps both " dog " and " cat "
        return block.row_of(starts[outer]), starts[outer], forms[outer]

    def match(self, captions: pa.Array | pa.ChunkedArray) -> BatchMatches:
        """Which classes each caption names (vectorised over the batch)."""
        n = len(captions)
        blocks = normalized_blocks(captions)
        empty = np.zeros(n, dtype=bool)
        for b in blocks:
            empty[b.empty_rows()] = True
        parts = [self._block_hits(b) for b in blocks] or [(np.empty(0, np.int64),) * 3]
        hit_rows, hit_pos, forms = (np.concatenate([p[k] for p in parts]) for k in range(3))
        order = np.lexsort((hit_pos, hit_rows))  # by row, then by position in the caption
        rows, classes, class_forms = self._expand(hit_rows[order], forms[order])
        n_cls = np.int64(max(len(self.vocab.class_names), 1))
        pairs = np.unique(rows * n_cls + classes)  # distinct (row, class), sorted
        n_classes = np.bincount(pairs // n_cls, minlength=n).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(n_classes)]).astype(np.int32)
        matched = pa.ListArray.from_arrays(pa.array(offsets), pa.array((pairs % n_cls).astype(np.int32)))
        first_label = np.full(n, NO_LABEL, dtype=np.int32)
        first_form = np.full(n, -1, dtype=np.int32)
        first_rows, first_idx = np.unique(rows, return_index=True)
        first_label[first_rows] = classes[first_idx]  # of a homonym, its lowest class
        first_form[first_rows] = class_forms[first_idx]
        return BatchMatches(n_classes, matched, first_label, first_form, empty)

    def _expand(self, rows: np.ndarray, forms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One entry per (hit, class its form names): a homonym's hit names several classes."""
        per_form = np.diff(self.vocab.form_ptr)[forms]
        first_of_hit = np.cumsum(per_form) - per_form
        within = np.arange(int(per_form.sum())) - np.repeat(first_of_hit, per_form)
        idx = np.repeat(self.vocab.form_ptr[forms], per_form) + within
        return (
            np.repeat(rows, per_form),
            self.vocab.form_classes[idx].astype(np.int64),
            np.repeat(forms, per_form),
        )


def decide(m: BatchMatches, policy: str, bad_uid: np.ndarray | None = None) -> tuple[np.ndarray, pa.Array]:
    """Labels (NO_LABEL where dropped) and drop reasons (null where kept) under ``policy``."""
    single = m.n_classes == 1
    multi = m.n_classes > 1
    label = np.where(single | (multi & (policy == "first")), m.first_label, NO_LABEL).astype(np.int32)
    reason = np.full(len(label), None, dtype=object)
    reason[(m.n_classes == 0) & ~m.empty] = "no_class_match"
    reason[m.empty] = "empty_caption"
    if policy == "drop":
        reason[multi] = "ambiguous"
    if bad_uid is not None:
        label[bad_uid] = NO_LABEL
        reason[bad_uid] = "bad_uid"
    return label, pa.array(reason, pa.string())


def bad_uids(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Rows whose uid is null or not 32 hexadecimal characters (they cannot be put in a subset)."""
    if not (pa.types.is_string(uids.type) or pa.types.is_large_string(uids.type)):
        uids = uids.cast(pa.string())
    ok = pc.fill_null(pc.match_substring_regex(uids, "^[0-9a-fA-F]{32}$"), False)
    return ~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)


class HardmatchJob(ShardJob):
    """Match every shard of ``source`` against the classes; writes ``OUT/matches/<shard>.parquet``."""

    name = STAGE

    def __init__(self, source: RowSource, cfg: HardmatchConfig, out: str | Path) -> None:
        self.source = source
        self.cfg = cfg
        self.out = storage.location(out)
        self.matcher: ClassMatcher | None = None

    def shards(self) -> list[str]:
        return self.source.shards()

    def output_dir(self) -> Path:
        return self.out / "matches"

    def setup(self) -> None:
        if self.matcher is None:
            self.matcher = ClassMatcher.from_config(self.cfg)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "matcher": None}  # each worker compiles its own automaton

    def run_shard(self, shard: str, staging: Path) -> list[StageStats]:
        self.setup()
        assert self.matcher is not None
        table = self.source.read(shard, ["uid", "caption", "source"], keep_null_uids=True)
        source = table["source"] if "source" in table.column_names else None
        parts, seconds = [], 0.0
        for start in range(0, max(table.num_rows, 1), self.cfg.batch_size):
            batch = table.slice(start, self.cfg.batch_size)
            t0 = time.perf_counter()
            m = self.matcher.match(batch["caption"])
            label, reason = decide(m, self.cfg.ambiguous, bad_uids(batch["uid"]))
            seconds += time.perf_counter() - t0
            parts.append(_match_table(batch, m, label, reason, self.matcher.vocab))
        result = pa.concat_tables(parts)
        atomic_write_parquet(staging / f"{shard}.parquet", result)
        stats = count_verdicts(
            STAGE, result["label"].is_valid().to_numpy(zero_copy_only=False), result["reason"], source
        )
        stats.extra["match_seconds"] = seconds
        stats.extra["caption_chars"] = int(
            pc.sum(pc.utf8_length(table["caption"].fill_null(""))).as_py() or 0
        )
        return [stats]


def _match_table(
    batch: pa.Table, m: BatchMatches, label: np.ndarray, reason: pa.Array, vocab: Vocabulary
) -> pa.Table:
    forms = pa.array(vocab.forms, pa.string())
    names = pa.array(vocab.class_names, pa.string())
    valid = label != NO_LABEL
    cols = {
        "uid": batch["uid"].cast(pa.string()),
        "source": batch["source"]
        if "source" in batch.column_names
        else pa.nulls(batch.num_rows, pa.string()),
        "label": pa.array(label, pa.int32(), mask=~valid),
        "class_name": pa.DictionaryArray.from_arrays(
            pa.array(np.where(valid, label, 0), pa.int32(), mask=~valid), names
        ),
        "n_classes": pa.array(m.n_classes, pa.int32()),
        "matched": m.matched,
        "form": pa.DictionaryArray.from_arrays(
            pa.array(np.maximum(m.first_form, 0), pa.int32(), mask=m.first_form < 0), forms
        ),
        "reason": reason,
    }
    return pa.table(cols)


# ------------------------------------------------------------------------------------------ gather


def gather_matches(out: str | Path) -> pa.Table:
    """Every shard's match table, in shard order."""
    paths = storage.list_files(storage.location(out) / "matches", "*.parquet")
    if not paths:
        raise FileNotFoundError(f"{out}/matches: no match tables; did the hardmatch job run?")
    tables = [storage.read_parquet(p) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive")


def drop_repeated_uids(matches: pa.Table) -> tuple[pa.Table, int, int]:
    """Every row of a uid after its first (in shard order) becomes a ``duplicate_uid`` drop.

    Returns the table, how many rows were dropped so, and how many uids had a repeat whose decision
    (label and reason) differs from the first row's: one uid with two captions that say different
    things, which a subset (one entry per uid) cannot keep both of.
    """
    rows = np.flatnonzero(pc.fill_null(pc.not_equal(matches["reason"], "bad_uid"), True).to_numpy())
    uids = hex_column_to_array(matches["uid"].take(pa.array(rows)))
    _, first, inverse = np.unique(uids, return_index=True, return_inverse=True)
    repeat = np.arange(len(rows)) != first[inverse]
    if not repeat.any():
        return matches, 0, 0
    label = matches["label"].fill_null(NO_LABEL).to_numpy()[rows]
    reason = matches["reason"].fill_null("").to_numpy(zero_copy_only=False)[rows]
    first_row = first[inverse]
    differs = repeat & ((label != label[first_row]) | (reason != reason[first_row]))
    conflicting = len(np.unique(inverse[differs]))
    drop = np.zeros(matches.num_rows, dtype=bool)
    drop[rows[repeat]] = True
    mask = pa.array(drop)
    null_label = pa.scalar(None, matches["label"].type)
    matches = matches.set_column(
        matches.schema.get_field_index("label"), "label", pc.if_else(mask, null_label, matches["label"])
    )
    class_name = matches["class_name"].cast(pa.string())
    matches = matches.set_column(
        matches.schema.get_field_index("class_name"),
        "class_name",
        pc.if_else(mask, pa.scalar(None, pa.string()), class_name).dictionary_encode(),
    )
    matches = matches.set_column(
        matches.schema.get_field_index("reason"),
        "reason",
        pc.if_else(mask, "duplicate_uid", matches["reason"]),
    )
    return matches, int(drop.sum()), conflicting


def labels_table(matches: pa.Table) -> pa.Table:
    """uid, label, class_name, source, form of the labelled captions, sorted by uid.

    Run on the output of :func:`drop_repeated_uids`, so there is one row per uid.
    """
    kept = matches.filter(pc.is_valid(matches["label"]))
    order = np.argsort(hex_column_to_array(kept["uid"]), kind="stable")
    table = kept.take(pa.array(order)).select(["uid", "label", "class_name", "source", "form"])
    table = table.set_column(2, "class_name", table["class_name"].cast(pa.string()))
    return table.set_column(4, "form", table["form"].cast(pa.string()))


def recount(matches: pa.Table, stats: StageStats) -> StageStats:
    """The stage's funnel over the final match table (after repeated uids are dropped)."""
    keep = matches["label"].is_valid().to_numpy(zero_copy_only=False)
    out = count_verdicts(STAGE, keep, matches["reason"], matches["source"])
    out.extra.update(stats.extra)
    out.check_balanced()
    return out


def finalize(
    out: str | Path,
    cfg: HardmatchConfig,
    stats: StageStats,
    vocab: Vocabulary,
    ground_truth: str | Path | None = None,
) -> dict[str, object]:
    """Write ``hardmatch.npy`` (+ manifest), ``labels.parquet``, ``classnames.txt`` and the report."""
    out = storage.location(out)
    matches, repeats, conflicting = drop_repeated_uids(gather_matches(out))
    stats = recount(matches, stats)
    labels = labels_table(matches)
    atomic_write_parquet(out / "labels.parquet", labels)
    atomic_write_text(out / "classnames.txt", "\n".join(vocab.class_names) + "\n")
    settings = cfg.model_dump(mode="json")
    evaluation = evaluate(matches, ground_truth) if ground_truth else None
    report = build_report(matches, vocab, stats, settings, evaluation)
    report["repeated_uids"] = repeats
    report["conflicting_uids"] = conflicting
    manifest = {
        "name": "hardmatch",
        "operation": "hardmatch",
        "labels": "labels.parquet",
        "classnames": "classnames.txt",
        "classes": len(vocab.class_names),
        "labelled_captions": stats.total.kept,
        "input_captions": stats.total.seen,
        "dropped": dict(stats.total.dropped),
        "config": settings,
    }
    Subset(hex_column_to_array(labels["uid"]), manifest).save(out / "hardmatch.npy")
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def prepare_output(out: Path, cfg: HardmatchConfig, source: RowSource, overwrite: bool) -> None:
    """Refuse to resume into matches made with other settings (the runner would skip their shards)."""
    where = storage.url(source.path) if storage.is_remote(source.path) else str(source.path.resolve())
    stamp = {"config": cfg.model_dump(mode="json"), "input": where}
    stamp_path = out / "matches" / "_run.json"
    if overwrite:
        storage.remove(out / "matches", recursive=True)
    if stamp_path.exists() and read_json(stamp_path) != stamp:
        raise HardmatchError(
            f"{out} holds matches of another input or config ({stamp_path}); pass --overwrite or a new --out"
        )
    atomic_write_json(stamp_path, stamp)


def run_hardmatch(
    input_path: str | Path,
    cfg: HardmatchConfig,
    out: str | Path,
    engine: Engine | str = "local",
    workers: int = 1,
    ground_truth: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[JobReport, dict[str, object] | None]:
    """Match every shard (resumable, any engine), then gather the labelled subset and the report."""
    out = storage.location(out)
    source = RowSource.open(input_path)
    prepare_output(out, cfg, source, overwrite)
    matcher = ClassMatcher.from_config(cfg)  # fail on a bad class list before any shard runs
    job = HardmatchJob(source, cfg, out)
    job.matcher = matcher
    report = run_job(job, engine, workers=workers)
    if report.failed:
        return report, None
    stats = merge(report.stats)[0]
    stats.check_balanced()
    result = finalize(out, cfg, stats, matcher.vocab, ground_truth)
    final = StageStats.from_dict(result["funnel"])
    if final.to_dict() != stats.to_dict():  # uids repeated across rows: callers see the final funnel
        for k, outcome in enumerate(report.outcomes):
            outcome.stats = [final] if k == 0 else []
    return report, result
