"""The ``card`` stage: a dataset card (README.md + self-contained HTML) from recorded stats only."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import NoConfig, StageDef, StageResult


class CardInputs(ConfigModel):
    subset: storage.Location = Field(description="Subset .npy (DataComp format) with its manifest.")
    out: storage.Location = Field(description="Directory for README.md, card.html and figures.")
    pool: storage.Location | None = Field(None, description="Pool directory; default: the manifest's pool.")
    results: list[storage.Location] = Field(
        default_factory=list, description="Evaluation results (JSON lines)."
    )
    name: str | None = Field(None, description="The set's name (default: the subset file's).")


def run_card(inputs: CardInputs, cfg: NoConfig, engine: Any = None) -> StageResult:
    from curation.cards.card import write_card
    from curation.cards.data import load_card_data
    from curation.core.pool import Pool

    data = load_card_data(inputs.subset, inputs.pool, inputs.results or None, name=inputs.name)
    pool = Pool(inputs.pool or storage.location(data.subset.manifest["pool"]))
    readme, html = write_card(data, pool, inputs.out)
    return StageResult({"readme": str(readme), "html": str(html)})


STAGE = StageDef("card", CardInputs, run_card)
