"""The embedded default, end to end: ``conf/pipelines/demo.yaml`` run by the one job-file runner.

``curate demo`` and ``curate run conf/pipelines/demo.yaml`` are the same code path: the demo only
fixes the job file, points its ``workdir`` at ``--out`` and its crawl size at ``--pairs``. Finished
steps are skipped on a rerun (the job runner's fingerprint markers) and the stages themselves resume
shard by shard. This module also declares the demo's last stage, a card per curated set.
"""

from __future__ import annotations

from pydantic import Field

from curation.core import storage
from curation.core.config import CONF_DIR, ConfigModel
from curation.core.stagedef import NoConfig, StageDef, StageResult

DEMO_JOB = CONF_DIR / "pipelines" / "demo.yaml"


class AblationCardsInputs(ConfigModel):
    """Every folder may be a URL."""

    ablation: storage.Location = Field(
        storage.location("ablation"), description="The ablation's output folder (sets/, cells/)."
    )
    sets: storage.Location = Field(
        storage.location("sets"), description="Further sets (FOLDER/NAME/NAME.npy), e.g. hardmatch."
    )
    pool: storage.Location = storage.location("pool")
    out: storage.Location = storage.location("cards")


def run_ablation_cards(inputs: AblationCardsInputs, cfg: NoConfig, engine: object = None) -> StageResult:
    """A dataset card per curated set, with the evaluations of every ablation cell trained on it."""
    from curation.cards.card import write_card
    from curation.cards.data import load_card_data
    from curation.core.pool import Pool

    subsets = storage.list_files(inputs.ablation / "sets", "*/subset.npy")
    subsets += storage.list_files(inputs.sets, "*/*.npy")
    cells = storage.list_files(inputs.ablation / "cells", "*/eval/results.jsonl")  # one listing
    for subset in subsets:
        name = subset.parent.name
        results = [r for r in cells if r.parent.parent.name.startswith(f"{name}__")]
        data = load_card_data(subset, inputs.pool, results, name=name)
        write_card(data, Pool(inputs.pool), inputs.out / name)
    return StageResult({"cards": [s.parent.name for s in subsets], "out": str(inputs.out)})


ABLATION_CARDS = StageDef("ablation_cards", AblationCardsInputs, run_ablation_cards)
