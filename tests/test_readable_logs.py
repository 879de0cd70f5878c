"""What a stage prints when its output goes to a log file or a pipe: no progress-bar residue (blank
lines, escape codes, bar frames) and funnel tables at their full width, not cut at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_metadata_pool

ROOT = Path(__file__).resolve().parents[1]
LONG_NAME = "caption_length_under_a_name_long_enough_to_need_more_than_eighty_columns"


def test_a_piped_stage_log_has_no_bar_residue_and_whole_tables(tmp_path):
    pool = write_metadata_pool(tmp_path / "pool", n_shards=30, per_shard=10)
    conf = tmp_path / "filters.yaml"
    conf.write_text(f"name: filters\nfilters:\n  - {{kind: caption_length, name: {LONG_NAME}}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TERM")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines", "filter", str(pool), "-c", str(conf)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    lines = log.splitlines()
    assert "\x1b[" not in log and "\r" not in log  # no cursor movement, no redraws
    assert not [i for i, line in enumerate(lines) if not line.strip()]  # no blank lines
    assert "━" not in "".join(line for line in lines if "filters" in line and "%" in line)  # no bar frame
    table = [line for line in lines if LONG_NAME in line]
    assert table and all("…" not in line for line in lines)  # the whole name, no cut column
    assert max(len(line) for line in table) > 80
    assert any("too_few_words" in line for line in lines)  # the last reason column is there
