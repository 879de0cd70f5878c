"""Plugins: a filter and a stage from another installed package (entry points), used by name through
``curate filter`` and ``curate run`` without touching the project's files (docs/architecture.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "curation_plugin"
CAPTIONS = ["a red circle photo", "item 12345 red circle", "blue star on a square", "IMG_20240101 star"]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, really installed (pip, from a copy) into a folder of its own."""
    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(PLUGIN, work / "src")
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(work / "src")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert list(site.glob("curation_plugin_example-*.dist-info"))
    return site


def small_pool(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = [
        {"key": f"00000{i:04d}", "url": f"http://127.0.0.1/{i}.jpg", "caption": c, "status": "success",
         "error_message": None, "source": ["photo", "forum"][i % 2]}
        for i, c in enumerate(CAPTIONS)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), root / "00000.parquet")
    return root


def curate(args: list[str], site: Path | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, ROOT) if p)
    cmd = [sys.executable, "-m", "pipelines", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


FILTERS_YAML = "name: plug\nfilters:\n  - {kind: caption_length}\n  - {kind: caption_digits, max_digits: 3}\n"


def test_a_plugin_filter_runs_through_curate_filter(plugin_site: Path, tmp_path: Path) -> None:
    pool = small_pool(tmp_path / "pool")
    (tmp_path / "f.yaml").write_text(FILTERS_YAML)
    done = curate(["filter", str(pool), "-c", str(tmp_path / "f.yaml")], plugin_site, tmp_path)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(pool / "attributes" / "plug" / "00000.parquet").to_pylist()
    verdicts = {r["uid"]: (r["caption_digits_keep"], r["caption_digits_reason"]) for r in table}
    assert sorted(v for v in verdicts.values()) == [
        (False, "too_many_digits"), (False, "too_many_digits"), (True, None), (True, None)
    ]  # fmt: skip
    assert "too_many_digits" in done.stderr  # the funnel names the plugin's reason


def test_without_the_plugin_the_kind_is_unknown_and_the_error_names_the_group(tmp_path: Path) -> None:
    pool = small_pool(tmp_path / "pool")
    (tmp_path / "f.yaml").write_text(FILTERS_YAML)
    done = curate(["filter", str(pool), "-c", str(tmp_path / "f.yaml")], None, tmp_path)
    assert done.returncode == 2
    assert "caption_digits" in done.stderr and "clip_curation.filters" in done.stderr


def test_a_plugin_filter_and_a_plugin_stage_run_in_a_job_file(plugin_site: Path, tmp_path: Path) -> None:
    small_pool(tmp_path / "work" / "pool")
    (tmp_path / "f.yaml").write_text(FILTERS_YAML)
    job = {
        "name": "plugin_job",
        "workdir": str(tmp_path / "work"),
        "steps": [
            {"stage": "filter", "with": {"pool": "pool", "config": str(tmp_path / "f.yaml")}},
            {
                "stage": "source_counts",
                "with": {"pool": "pool", "out": "counts.json", "settings": {"by": "source"}},
            },
        ],
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    done = curate(["run", str(tmp_path / "job.yaml")], plugin_site, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "work" / "counts.json").read_text()) == {"forum": 2, "photo": 2}
    assert len(list((tmp_path / "work" / "pool" / "attributes" / "plug").glob("*.parquet"))) == 1
