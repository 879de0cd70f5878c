"""A whole job (download, score, copy descriptors, filters, top-k, reshard, card) with every input and
output on s3 (a real S3 server on 127.0.0.1): the same bytes as the same job on local disk, on the
local, Spark and Ray engines; a SIGKILL mid-stage then the same command leaves no stray object; and
nothing the job wrote or logged holds the secret key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.core import storage
from curation.core.config import CONF_DIR
from curation.engines import open_engine
from tests.s3kit import SECRET
from tests.synth_pool import small_crawl
from tests.test_scoring import save_tiny_checkpoint
from workflows.jobfile import load_job, run_job_file

JOB = CONF_DIR / "pipelines" / "crawl_to_shards.yaml"
ROOT = Path(__file__).resolve().parents[1]
# Outputs compared byte for byte; markers and stats hold times, the card embeds the set's location.
COMPARED = ("pool/attributes/", "subsets/", "shards/")
TIMED = ("/_done/", "/_stats/", "_job/", "stats.json", "_stats.json", "/card/")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic crawl (the job serves it on 127.0.0.1), a tiny reference CLIP, the job on disk."""
    tmp = tmp_path_factory.mktemp("storage_job")
    synth = small_crawl(tmp / "synth", 150)
    ckpt = save_tiny_checkpoint(tmp / "tiny.pt", seed=0)
    world = {"synth": synth, "ckpt": ckpt, "local": tmp / "local"}
    job = load_job(JOB, job_sets(str(world["local"]), str(synth / "crawl.parquet"), str(ckpt), synth))
    with open_engine("local") as eng:
        world["runs"] = run_job_file(job, eng)  # type: ignore[assignment]
    return world


def job_sets(workdir: str, crawl: str, ckpt: str, synth: Path) -> list[str]:
    return [
        f"workdir={workdir}",
        f"vars.crawl={crawl}",
        f"vars.serve={synth}",
        "vars.download=${conf}/download/synthetic.yaml",
        "vars.model=tiny-vit",
        f"vars.pretrained={ckpt}",
        "vars.fraction=0.5",
        "steps.0.with.set=[number_sample_per_shard=40]",  # 4 shards: both workers get some
        "steps.1.with.config=${conf}/score/tiny.yaml",
    ]


def upload_inputs(s3, world) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    crawl, ckpt = f"{s3.url}/in/crawl.parquet", f"{s3.url}/in/tiny.pt"
    storage.write_bytes(crawl, (world["synth"] / "crawl.parquet").read_bytes())
    storage.write_bytes(ckpt, world["ckpt"].read_bytes())
    return crawl, ckpt


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def s3_files(s3, prefix: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    fs = s3.fs()
    return {k.removeprefix(prefix + "/"): fs.cat_file(f"{s3.bucket}/{k}") for k in s3.keys(prefix)}


def compared(files: dict[str, bytes]) -> dict[str, bytes]:
    return {
        k: v for k, v in files.items()
        if k.startswith(COMPARED) and not any(t in "/" + k for t in TIMED)
    }  # fmt: skip


def assert_same_outputs(local: dict[str, bytes], remote: dict[str, bytes]) -> None:
    a, b = compared(local), compared(remote)
    assert sorted(a) == sorted(b)
    assert any(k.startswith("pool/attributes/demo/") for k in a) and "subsets/top.npy" in a
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"differ between disk and s3: {differ}"


ENGINES = [
    pytest.param("local", id="local"),
    pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow], id="spark"),
    pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow], id="ray"),
]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_whole_job_on_s3_matches_local_disk(world, s3, engine: str) -> None:  # type: ignore[no-untyped-def]
    crawl, ckpt = upload_inputs(s3, world)
    job = load_job(JOB, job_sets(f"{s3.url}/job", crawl, ckpt, world["synth"]))
    with open_engine(engine, workers=2) as eng:
        runs = run_job_file(job, eng)
    assert [r.status for r in runs] == ["done"] * 7
    assert [r.summary for r in runs[1:]] == [r.summary for r in world["runs"][1:]]  # funnels equal
    remote = s3_files(s3, "job")
    assert_same_outputs(local_files(world["local"]), remote)
    assert "card/README.md" in remote and "shards/sizes.json" in remote
    assert not [k for k, v in remote.items() if SECRET.encode() in v]
    assert not any(k.startswith(("job/.staging", "job/_pending")) or "/_pending/" in k for k in remote)


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_leaves_no_stray_object(world, s3, tmp_path) -> None:  # type: ignore[no-untyped-def]
    crawl, ckpt = upload_inputs(s3, world)
    sets = job_sets(f"{s3.url}/job", crawl, ckpt, world["synth"])
    cmd = [sys.executable, "-m", "pipelines", "run", str(JOB), *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any("/_pending/" in k or "/_done/" in k for k in s3.keys("job/pool/attributes")):
                break  # the score step is committing shards
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = s3.keys("job/pool/attributes")
    assert partial, "killed before the score step wrote anything"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    remote = s3_files(s3, "job")
    assert_same_outputs(local_files(world["local"]), remote)
    assert not [k for k in remote if "/_pending/" in k or "/.staging/" in k]
    expected = {k for k in local_files(world["local"]) if ".staging" not in k and not k.endswith(".tmp")}
    expected -= {"pool.crawl_local.parquet"}  # the served crawl's local copy sits beside a local pool
    assert set(remote) - expected == set(), "objects the disk run does not have"
    for text in (log.read_text(), again.stdout, again.stderr):
        assert SECRET not in text
    assert not [k for k, v in remote.items() if SECRET.encode() in v]
