"""The ``synth`` stage: generate the synthetic crawl, its web, ground truth and evaluation suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.core.config import ConfigModel
from curation.core.stagedef import StageDef, StageResult
from curation.synth.config import SynthConfig


class SynthInputs(ConfigModel):
    out: Path = Path("synth")
    overwrite: bool = False
    progress: bool = False


def run_synth(inputs: SynthInputs, cfg: SynthConfig, engine: Any = None) -> StageResult:
    """Written atomically, so a folder that exists is a finished generation: kept unless ``overwrite``."""
    from curation.synth.build import generate

    if inputs.out.exists() and not inputs.overwrite:
        return StageResult({"out": str(inputs.out), "reused": True})
    manifest = generate(cfg, inputs.out, overwrite=inputs.overwrite, progress=inputs.progress)
    return StageResult({"out": str(inputs.out), "pairs": cfg.n_pairs, "manifest": manifest})


STAGE = StageDef("synth", SynthInputs, run_synth, SynthConfig, "synth/default.yaml")
