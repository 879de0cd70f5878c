"""The demo is conf/pipelines/demo.yaml run by the one job runner: same steps, same markers, same resume."""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from curation.core.stagedef import STAGES, StageFailed, StageResult
from pipelines.app import app
from workflows.demo import DEMO_JOB
from workflows.jobfile import load_job, plan_steps, run_job_file, step_marker

STEPS = [
    "synth",
    "download",
    "reference_model",
    "reference_eval",
    "score",
    "copydesc",
    "filter",
    "semdedup",
    "lowlevel",
    "train_head",
    "score_head",
    "semdedup_top30",
    "metaclip_balanced",
    "quality_top30",
    "hardmatch",
    "ablation",
    "cards",
]


def fake_stages(calls: list[str], fail: str | None = None) -> ExitStack:
    """Every stage of the demo with its real inputs and config models but a run that only records."""
    stack = ExitStack()
    for name in {s.stage for s in load_job(DEMO_JOB).steps}:
        real = STAGES.get(name)

        def run(inputs: Any, cfg: Any, engine: Any, name: str = name) -> StageResult:
            calls.append(name)
            if name == fail:
                raise StageFailed(f"{name} failed")
            return StageResult({"fake": name})

        stack.enter_context(STAGES.temporarily(name, dataclasses.replace(real, run=run)))
    return stack


def test_the_demo_job_has_the_demo_steps_and_validates(tmp_path: Path) -> None:
    job = load_job(DEMO_JOB, [f"workdir={tmp_path}"])
    assert [s.spec.label for s in plan_steps(job, tmp_path)] == STEPS


def test_a_failed_step_stops_the_job_unmarked_and_a_rerun_resumes_from_it(tmp_path: Path) -> None:
    from curation.engines import get_engine

    job = load_job(DEMO_JOB, [f"workdir={tmp_path}", "vars.pairs=600"])
    calls: list[str] = []
    with fake_stages(calls, fail="score"), pytest.raises(StageFailed, match="score"):
        run_job_file(job, get_engine("local"))
    assert calls == ["synth", "download", "reference_model", "evaluate", "score"]
    steps = plan_steps(job, tmp_path)
    assert step_marker(tmp_path, steps[3]).exists() and not step_marker(tmp_path, steps[4]).exists()
    calls.clear()
    with fake_stages(calls):
        runs = run_job_file(job, get_engine("local"))
    methods = ["filter", "copydesc", "train_head", "score_head", "select", "select", "select"]
    assert calls == ["score", "copydesc", "filter", *methods, "hardmatch", "ablate", "ablation_cards"]
    assert [r.status for r in runs] == ["skipped"] * 4 + ["done"] * 13


def test_curate_demo_and_curate_run_of_the_demo_job_are_one_code_path(tmp_path: Path) -> None:
    """What `curate demo --out X` finished, `curate run demo.yaml --set workdir=X` finds done: the same
    steps with the same fingerprints (resolved settings), written by the same runner."""
    calls: list[str] = []
    with fake_stages(calls):
        assert app(["demo", "--out", str(tmp_path), "--pairs", "600"], standalone_mode=False) in (None, 0)
        assert len(calls) == len(STEPS)
        calls.clear()
        code = app(
            ["run", str(DEMO_JOB), "--set", f"workdir={tmp_path}", "--set", "vars.pairs=600"],
            standalone_mode=False,
        )
    assert code in (None, 0) and calls == []
