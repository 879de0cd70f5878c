"""The calls an ablation cell makes into other parts of the project, one function each.

Selection and resharding (``curation.selection.run``, ``curation.reshard.run``), training (``trainer.train``)
and evaluation (``trainer.evaluate``) each have their own API; keeping every call here, behind a
small signature, means the grid runner never depends on their details and a change of theirs is a
change of one function. Imports are lazy so that ``curate --help`` does not load torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curation.engines import Engine

log = logging.getLogger(__name__)


def select_topk(
    pool: Path,
    score: str,
    fraction: float,
    within: str | None,
    out: Path,
    engine: Engine | str = "local",
) -> Path:
    """The exact top ``fraction`` of the pool by ``score`` (ties by uid), optionally among a filter's kept."""
    steps: list[dict[str, Any]] = [{"filter": {"stage": within}}] if within else []
    steps.append({"topk": {"score": score, "fraction": fraction}})
    return _select(pool, f"top {100 * fraction:g}% by {score}", steps, out, engine)


def select_random(
    pool: Path,
    size_of: Path,
    seed: int,
    within: str | None,
    out: Path,
    engine: Engine | str = "local",
) -> Path:
    """A seeded uniform sample of the same candidates, exactly as large as the subset ``size_of``."""
    steps: list[dict[str, Any]] = [{"filter": {"stage": within}}] if within else []
    steps.append({"random": {"size_of": str(size_of), "seed": seed}})
    description = f"random control of the size of {size_of.name} (seed {seed})"
    return _select(pool, description, steps, out, engine)


def select_mix(
    pool: Path,
    within: str | None,
    clean: Sequence[str],
    noisy: Sequence[str],
    share: float,
    seed: int,
    out: Path,
    engine: Engine | str = "local",
) -> Path:
    """Every candidate of the clean sources, plus noisy-source candidates making up ``share`` of the set.

    Candidates are the pool's samples (those ``within`` kept); the draw is ``curate mix``'s
    (:mod:`curation.builders.mixing`: exact counts, seeded per source, without replacement).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curation.builders.mixing import (
        MixConfig,
        MixError,
        MixInput,
        gather_candidates,
        largest_remainder,
        mix,
        write_mix,
    )
    from curation.core.rowsource import RowSource
    from curation.core.subset import Subset
    from curation.core.uid import array_to_uids

    candidates = out.parent / "candidates.npy"
    steps: list[dict[str, Any]] = [{"filter": {"stage": within}}] if within else [{"all": {}}]
    _select(pool, f"candidates of the mix (kept by {within})", steps, candidates, engine)
    member = pa.array(array_to_uids(Subset.load(candidates).uids))
    rows = RowSource.open(pool)
    tables = [rows.read_columns(shard, ["uid", "source"]) for shard in rows.shards()]
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table["uid"], member))
    table_path = out.parent / "candidates.parquet"
    pq.write_table(table, table_path)
    cands = gather_candidates([MixInput(path=table_path, sources=[*clean, *noisy])])
    available = cands.available()
    missing = [s for s in [*clean, *noisy] if not available.get(s)]
    if missing:
        raise MixError(f"mix: no candidates from source(s) {missing} (the pool has {sorted(available)})")
    counts = {s: available[s] for s in clean}
    if noisy:
        want = round(sum(counts.values()) * share / (1 - share))
        noisy_counts = largest_remainder(np.array([available[s] for s in noisy], dtype=float), want)
        counts.update({s: int(c) for s, c in zip(noisy, noisy_counts, strict=True)})
    short = {s: n for s, n in counts.items() if n > available[s]}
    if short:
        log.warning("mix %s: fewer candidates than asked (%s): all of them are used", out.parent.name, short)
    name = out.parent.name
    result = mix(MixConfig(name=name, counts=counts, seed=seed, shortfall="cap"), cands)
    result.subset.manifest["funnel"] = _mix_funnel(candidates, table, result.stats.by_source)
    result.subset.manifest["description"] = (
        f"{'+'.join(clean)} alone" if not noisy else f"{'+'.join(clean)} + {'+'.join(noisy)} at {share:.0%}"
    )
    return write_mix(result, out)


def _mix_funnel(candidates: Path, table: Any, drawn: dict[str, Any]) -> dict[str, Any]:
    """The candidates' selection funnel, then one ``mix`` stage over every candidate, so a card's
    funnel runs from the pool to the mixed set: a candidate is drawn, of a source left out, or not drawn."""
    from collections import Counter

    from curation.core.stats import Counts, StageStats
    from curation.core.subset import Subset

    stage = StageStats("mix")
    per_source = table.group_by("source").aggregate([("uid", "count")]).to_pylist()
    for row in per_source:
        source, seen = str(row["source"]), int(row["uid_count"])
        kept = drawn[source].kept if source in drawn else 0
        reason = "not_drawn" if source in drawn else "source_not_mixed"
        counts = Counts(seen, kept, Counter({reason: seen - kept} if seen > kept else {}))
        stage.by_source[source] = counts
        stage.total.add(counts)
    before = Subset.load(candidates).manifest.get("funnel", {}).get("stages", [])
    return {"stages": [*before, stage.to_dict()]}


def _select(
    pool: Path, description: str, steps: list[dict[str, Any]], out: Path, engine: Engine | str
) -> Path:
    """The ``select`` stage, as ``curate select`` and job files run it."""
    from curation.core.stagedef import STAGES
    from curation.selection.run import SelectSpec

    # the set's directory (OUT/sets/NAME/subset.npy) names it: cards and manifests show that name
    spec = SelectSpec(name=out.parent.name, description=description, steps=steps)
    stage = STAGES.get("select")
    return Path(stage.run(stage.make_inputs({"pool": pool, "out": out}), spec, engine).summary["subset"])


def reshard(
    pool: Path, subset: Path, out: Path, settings: dict[str, Any], engine: Engine | str = "local"
) -> Path:
    """The ``reshard`` stage: the subset's samples as training shards; resumes an interrupted run."""
    from curation.core.stagedef import STAGES

    stage = STAGES.get("reshard")
    inputs = stage.make_inputs({"pool": pool, "subset": subset, "out": out})
    stage.run(inputs, stage.load_config(None, settings), engine)
    return out


def train(
    shards: Any,  # a local path or a URL, as is run_dir
    run_dir: Any,
    preset: str,
    preset_overrides: Sequence[str],
    mode: str,
    samples_seen: int | None,
    seed: int,
    device: str,
    supervised: bool = False,
    classnames: Any = None,
) -> dict[str, Any]:
    """The ``train`` stage (or the finished run in ``run_dir``, reused); returns its ``run.json``."""
    from curation.core.stagedef import STAGES

    stage = STAGES.get("train")
    inputs = {
        "shards": shards, "out": run_dir, "preset": preset, "preset_set": list(preset_overrides),
        "mode": mode, "samples_seen": samples_seen, "seed": seed, "device": device,
        "supervised": supervised, "classnames": classnames, "reuse": True,
    }  # fmt: skip
    return dict(stage.run(stage.make_inputs(inputs), stage.load_config(), None).summary["run"])


def evaluate(
    run_dir: Any, label: str, suite: Any, eval_config: Path | None, overrides: Sequence[str], out: Any
) -> list[dict[str, Any]]:
    """Zero-shot classification and retrieval of a finished run on the suite; writes ``out/results.jsonl``.

    The run, the suite and ``out`` may be URLs (a suite there is copied to a local temp folder)."""
    from trainer.eval_config import load_eval_config
    from trainer.evaluate import evaluate_suite
    from trainer.evaluatees import load_evaluatee, resolve_source
    from trainer.suites import load_suite, local_suite

    cfg = load_eval_config(eval_config, list(overrides))
    source = resolve_source(str(run_dir), None, None, label)
    with local_suite(suite) as suite_dir:
        return evaluate_suite(load_evaluatee(source, cfg), load_suite(suite_dir), cfg, out)
