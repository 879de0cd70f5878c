"""The embedded default, end to end: ``conf/pipelines/demo.yaml`` run by the one job-file runner.

``curate demo`` and ``curate run conf/pipelines/demo.yaml`` are the same code path: the demo only
fixes the job file, points its ``workdir`` at ``--out`` and its crawl size at ``--pairs``. Finished
steps are skipped on a rerun (the job runner's fingerprint markers) and the stages themselves resume
shard by shard. This module also declares the demo's last stage, a card per curated set.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from curation.core.config import CONF_DIR, ConfigModel
from curation.core.stagedef import NoConfig, StageDef, StageResult

DEMO_JOB = CONF_DIR / "pipelines" / "demo.yaml"


class AblationCardsInputs(ConfigModel):
    ablation: Path = Field(Path("ablation"), description="The ablation's output folder (sets/, cells/).")
    sets: Path = Field(Path("sets"), description="Further sets (FOLDER/NAME/NAME.npy), e.g. hardmatch.")
    pool: Path = Path("pool")
    out: Path = Path("cards")


def run_ablation_cards(inputs: AblationCardsInputs, cfg: NoConfig, engine: object = None) -> StageResult:
    """A dataset card per curated set, with the evaluations of every ablation cell trained on it."""
    from curation.cards.card import write_card
    from curation.cards.data import load_card_data
    from curation.core.pool import Pool

    subsets = sorted((inputs.ablation / "sets").glob("*/subset.npy")) + sorted(inputs.sets.glob("*/*.npy"))
    for subset in subsets:
        name = subset.parent.name
        results = sorted((inputs.ablation / "cells").glob(f"{name}__*/eval/results.jsonl"))
        data = load_card_data(subset, inputs.pool, results, name=name)
        write_card(data, Pool(inputs.pool), inputs.out / name)
    return StageResult({"cards": [s.parent.name for s in subsets], "out": str(inputs.out)})


ABLATION_CARDS = StageDef("ablation_cards", AblationCardsInputs, run_ablation_cards)
