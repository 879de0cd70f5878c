"""The demo's step runner: finished steps are skipped on a rerun; a failed step stops the demo unmarked."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows.demo import DemoLayout, DemoStepFailed, demo_steps, run_demo


def test_a_failed_step_stops_the_demo_and_a_rerun_resumes_from_it(tmp_path: Path) -> None:
    lay = DemoLayout(tmp_path)
    names = [s.name for s in demo_steps(lay, 1000)]
    assert names[:3] == ["synth", "download", "reference_model"] and names[-1] == "ablation"
    for done in ("synth", "download"):  # an earlier run got this far (download needs a served crawl)
        lay.marker(done).parent.mkdir(parents=True, exist_ok=True)
        lay.marker(done).write_text("{}")
    calls: list[str] = []

    def failing_score(argv: list[str]) -> int:
        calls.append(argv[0])
        return 1 if argv[0] == "score" else 0

    with pytest.raises(DemoStepFailed, match="score"):
        run_demo(tmp_path, 1000, invoke=failing_score)
    assert calls == ["reference-model", "evaluate", "score"]
    assert lay.marker("reference_model").exists() and not lay.marker("score").exists()

    calls.clear()
    timings = run_demo(tmp_path, 1000, invoke=lambda argv: calls.append(argv[0]) or 0)
    assert calls == ["score", "copydesc", "filter", "hardmatch", "ablate"]
    assert all(lay.marker(n).exists() for n in names) and "ablation" in timings
    assert (tmp_path / "commands.sh").read_text().count("curate ") == len(names)
