"""The ``train``, ``reference_model`` and ``evaluate`` stages: a curated set in, a model and scores out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from curation.core import storage
from curation.core.config import ConfigModel
from curation.core.stagedef import NoConfig, StageDef, StageResult
from trainer.eval_config import EvalConfig

log = logging.getLogger(__name__)


class TrainInputs(ConfigModel):
    """Everything a training run takes besides the preset's contents (the data, the budget, the seed)."""

    shards: storage.Location = Field(description="Training shards directory or URL (NNNNN.tar + sizes.json).")
    out: storage.Location = Field(description="Run directory or URL (resumed if unfinished).")
    preset: str = Field("tiny", description="tiny, small, medium or a preset YAML path.")
    preset_config: Path | None = Field(None, description="A partial preset YAML merged over the preset.")
    preset_set: list[str] = Field(default_factory=list, description="Dotted overrides of the preset.")
    mode: Literal["one_epoch", "equal_samples"] = "one_epoch"
    samples_seen: int | None = None
    seed: int = 0
    device: str = "auto"
    gpus: int = 1
    supervised: bool = False
    classnames: storage.Location | None = None
    overwrite: bool = False
    reuse: bool = Field(False, description="Return a finished run in `out` as it is (no retraining).")

    def request(self) -> Any:
        """The trainer's request: the one place a ``TrainRequest`` is built from settings."""
        from trainer.presets import load_preset
        from trainer.train import TrainRequest

        return TrainRequest(
            shards=self.shards,
            out=self.out,
            preset=load_preset(self.preset, self.preset_config, self.preset_set),
            mode=self.mode,
            samples_seen=self.samples_seen,
            seed=self.seed,
            device=self.device,
            gpus=self.gpus,
            supervised=self.supervised,
            classnames=self.classnames,
            overwrite=self.overwrite,
        )


class ReferenceModelInputs(TrainInputs):
    """The reference CLIP (a data filtering network): trained on a clean seed set, equal samples seen."""

    shards: storage.Location = Field(storage.location("synth/seed"), description="Clean seed shards.")
    out: storage.Location = storage.location("reference")
    mode: Literal["one_epoch", "equal_samples"] = "equal_samples"


def run_train(inputs: TrainInputs, cfg: NoConfig, engine: Any = None) -> StageResult:
    from trainer.runs import RUN_FILE, load_run
    from trainer.train import train

    if inputs.reuse and (inputs.out / RUN_FILE).exists():
        run = load_run(inputs.out)
    else:
        run = train(inputs.request())
    summary = {"kind": run.kind, "model": run.model, "checkpoint": str(run.checkpoint)}
    return StageResult({**summary, "run": dict(run.info)})


class EvaluateInputs(ConfigModel):
    source: storage.Location | None = Field(None, description="A run directory or checkpoint file (or URL).")
    model: str | None = Field(None, description="open_clip model name (with a checkpoint or --pretrained).")
    pretrained: str | None = Field(None, description="open_clip pretrained tag for `model`.")
    suite: storage.Location = Field(
        description="Evaluation suite directory or URL (or a suite name from the eval config)."
    )
    out: storage.Location | None = Field(None, description="Output dir or URL (default RUN/eval/SUITE).")
    label: str | None = None
    clip_benchmark: storage.Location | None = Field(
        None, description="Also write CLIP_benchmark's layout here (a folder or a URL)."
    )


def run_evaluate(inputs: EvaluateInputs, cfg: EvalConfig, engine: Any = None) -> StageResult:
    from trainer.evaluate import default_out_dir, evaluate_suite
    from trainer.evaluatees import load_evaluatee, resolve_source
    from trainer.suites import load_suite, local_suite, resolve_suite

    with local_suite(resolve_suite(str(inputs.suite), cfg.suites)) as suite_dir:  # a URL: copied here
        suite = load_suite(suite_dir)
        source = resolve_source(
            str(inputs.source) if inputs.source else None, inputs.model, inputs.pretrained, inputs.label
        )
        out = inputs.out or default_out_dir(source, suite)
        log.info(
            "evaluating %s on suite %r (%d sets) -> %s", source.label, suite.name, len(suite.test_sets), out
        )
        records = evaluate_suite(load_evaluatee(source, cfg), suite, cfg, out)
    if inputs.clip_benchmark is not None:
        from trainer.evaluate import write_clip_benchmark

        write_clip_benchmark(records, inputs.clip_benchmark)
    return StageResult({"results": str(out / "results.jsonl"), "out": str(out), "records": records})


TRAIN = StageDef("train", TrainInputs, run_train)
REFERENCE_MODEL = StageDef("reference_model", ReferenceModelInputs, run_train)
EVALUATE = StageDef("evaluate", EvaluateInputs, run_evaluate, EvalConfig, "eval/default.yaml")
