"""A whole job (download, score, copy descriptors, filters, top-k, reshard, card) with every input and
output on s3 (a real S3 server on 127.0.0.1): the same bytes as the same job on local disk, on the
local, Spark and Ray engines; a SIGKILL mid-stage then the same command leaves no stray object; and
nothing the job wrote or logged holds the secret key.
"""

from __future__ import annotations

import json
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


def places_of(world, s3, crawl: str, ckpt: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        str(world["local"]): "WORKDIR", f"{s3.url}/job": "WORKDIR",
        str(world["ckpt"]): "CKPT", ckpt: "CKPT",
        str(world["synth"] / "crawl.parquet"): "CRAWL", crawl: "CRAWL",
    }  # fmt: skip


def summaries(runs, workdir: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Each step's summary (funnels, decisions, counts) with the workdir's location taken out."""
    return [json.dumps(r.summary, sort_keys=True).replace(workdir, "WORKDIR") for r in runs[1:]]


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


def assert_same_outputs(local: dict[str, bytes], remote: dict[str, bytes], places: dict[str, str]) -> None:
    """Every compared object byte-identical, except files that record where their inputs were (a
    manifest's pool, a score table's checkpoint): those equal once ``places`` (each location on
    disk and on s3 -> one name) are swapped and run times dropped."""
    a, b = compared(local), compared(remote)
    assert sorted(a) == sorted(b)
    assert any(k.startswith("pool/attributes/demo/") for k in a) and "subsets/top.npy" in a
    differ = [k for k in a if a[k] != b[k]]
    located = [k for k in differ if k.endswith((".json", ".parquet"))]
    assert differ == located, f"differ between disk and s3: {sorted(set(differ) - set(located))}"
    for k in located:
        assert normalized(k, a[k], places) == normalized(k, b[k], places), k
    assert "subsets/top.npy" not in differ and not any(k.startswith("shards/0") for k in differ)


def normalized(name: str, data: bytes, places: dict[str, str]) -> object:
    """A JSON or parquet file with its locations named alike and its run times left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def swap(text: str) -> str:
        for place, label in sorted(places.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(place, label)
        return text

    def untimed(value: object) -> object:
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if k not in ("seconds", "created", "finished")}
        return [untimed(v) for v in value] if isinstance(value, list) else value

    if name.endswith(".json"):
        return untimed(json.loads(swap(data.decode())))
    table = pq.read_table(pa.BufferReader(data))
    meta = {k.decode(): swap(v.decode()) for k, v in (table.schema.metadata or {}).items()}
    return table.replace_schema_metadata(None).to_pylist(), meta


ENGINES = [
    pytest.param("local", id="local"),
    pytest.param("spark", marks=[pytest.mark.spark, pytest.mark.slow], id="spark"),
    pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow], id="ray"),
]
DOWNLOADED = ("pool/attributes/download/", "pool/_download/", "pool/_stats/", "pool/_done/")


def upload_downloaded_pool(s3, world) -> None:  # type: ignore[no-untyped-def]
    """The disk run's pool as its download step left it: img2dataset's shards and the download's records."""
    pool = world["local"] / "pool"
    for path in sorted(p for p in pool.rglob("*") if p.is_file()):
        rel = path.relative_to(world["local"]).as_posix()
        if "/" not in rel.removeprefix("pool/") or rel.startswith(DOWNLOADED):
            storage.write_bytes(f"{s3.url}/job/{rel}", path.read_bytes())


@pytest.mark.parametrize("engine", ENGINES)
def test_job_on_s3_writes_the_bytes_of_the_job_on_disk(world, s3, engine: str) -> None:  # type: ignore[no-untyped-def]
    """Given the same downloaded pool (img2dataset writes rows in the order fetches finish, so two
    downloads of one crawl differ in row order on any storage), every later step's output is the same
    object on s3 as on disk, on every engine."""
    crawl, ckpt = upload_inputs(s3, world)
    upload_downloaded_pool(s3, world)
    job = load_job(JOB, job_sets(f"{s3.url}/job", crawl, ckpt, world["synth"]))
    with open_engine(engine, workers=2) as eng:
        runs = run_job_file(job, eng, skip=["download"])
    assert [r.status for r in runs] == ["left out"] + ["done"] * 6
    assert summaries(runs, f"{s3.url}/job") == summaries(world["runs"], str(world["local"]))  # funnels equal
    remote = s3_files(s3, "job")
    assert_same_outputs(local_files(world["local"]), remote, places_of(world, s3, crawl, ckpt))
    assert "card/README.md" in remote and "shards/sizes.json" in remote
    assert not [k for k, v in remote.items() if SECRET.encode() in v]
    assert not [k for k in remote if "/_pending/" in k or "/.staging/" in k]


def sorted_rows(data: bytes) -> list[dict]:
    """A parquet table's rows by uid, with the served web's port (chosen per run) taken out of urls and
    floats to 5 decimals: a pool in another row order batches rows differently, which moves float32
    sums (a CLIP score, a descriptor's similarity) in the last bits."""
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    port = re.compile(r"127\.0\.0\.1:\d+")

    def clean(v: object) -> object:
        return port.sub("HOST", v) if isinstance(v, str) else round(v, 5) if isinstance(v, float) else v

    rows = [{k: clean(v) for k, v in r.items() if k != "key"} for r in rows]
    return sorted(rows, key=lambda r: (str(r.get("uid")), json.dumps(r, sort_keys=True, default=str)))


@pytest.mark.slow
def test_whole_job_with_its_download_on_s3(world, s3) -> None:  # type: ignore[no-untyped-def]
    """Download included: the same subset bytes and funnels, attribute tables with the same rows."""
    crawl, ckpt = upload_inputs(s3, world)
    job = load_job(JOB, job_sets(f"{s3.url}/job", crawl, ckpt, world["synth"]))
    with open_engine("local") as eng:
        runs = run_job_file(job, eng)
    assert [r.status for r in runs] == ["done"] * 7
    assert summaries(runs, f"{s3.url}/job") == summaries(world["runs"], str(world["local"]))
    remote, local = s3_files(s3, "job"), local_files(world["local"])
    assert remote["subsets/top.npy"] == local["subsets/top.npy"]
    tables = [k for k in compared(local) if k.startswith("pool/attributes/") and k.endswith(".parquet")]
    assert len(tables) >= 16
    for k in tables:
        assert sorted_rows(remote[k]) == sorted_rows(local[k]), k
    assert not [k for k, v in remote.items() if SECRET.encode() in v]


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_leaves_no_stray_object(world, s3, tmp_path) -> None:  # type: ignore[no-untyped-def]
    crawl, ckpt = upload_inputs(s3, world)
    upload_downloaded_pool(s3, world)
    sets = job_sets(f"{s3.url}/job", crawl, ckpt, world["synth"])
    cmd = [sys.executable, "-m", "pipelines", "run", str(JOB), "--skip", "download"]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any("/_pending/" in k or "/_done/" in k for k in s3.keys("job/pool/attributes/clip_score")):
                break  # the score step is committing shards
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = s3.keys("job/pool/attributes/clip_score")
    assert partial, "killed before the score step wrote anything"
    assert not any(k.startswith("job/subsets/") for k in s3.keys("job")), "killed after the score step"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    remote = s3_files(s3, "job")
    assert_same_outputs(local_files(world["local"]), remote, places_of(world, s3, crawl, ckpt))
    assert not [k for k in remote if "/_pending/" in k or "/.staging/" in k]
    expected = {k for k in local_files(world["local"]) if ".staging" not in k and not k.endswith(".tmp")}
    expected -= {"pool.crawl_local.parquet"}  # the served crawl's local copy sits beside a local pool
    assert set(remote) - expected == set(), "objects the disk run does not have"
    for text in (log.read_text(), again.stdout, again.stderr):
        assert SECRET not in text
    assert not [k for k, v in remote.items() if SECRET.encode() in v]
