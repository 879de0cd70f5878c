"""curate download with the crawl and the pool on object storage (moto's S3 server on 127.0.0.1).

The same small crawl (tests/test_download.py's 127.0.0.1 image server) is downloaded once into a
local pool and once, through the stage's run function, from ``s3://bucket/crawl/`` into
``s3://bucket/pool``: the pools hold the same files, with the same rows, tar members and attribute
bytes. What differs by nature: timings (img2dataset's ``NNNNN_stats.json``, the ``_done`` markers,
``download_seconds`` in the stats, robots.txt fetch times), the crawl's location recorded in the plan
(``parts[].file``) and img2dataset's log (it prints its own paths and timings). Then a rerun after a
simulated kill on s3, a retry pass, and ``memory://`` (the plan and the accounting; a real fetch
there is refused, img2dataset writes from worker processes).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core import storage
from curation.core.config import load_config
from curation.core.io import read_json
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.download import DownloadConfig, download_crawl, download_stats, retry_failed
from curation.download import run as run_module
from curation.download.fetch import Img2datasetConfigError, run_img2dataset
from curation.download.stage import DownloadInputs, run_download
from curation.engines import get_engine
from tests.s3kit import S3, SECRET, aws_env
from tests.test_download import _url, server, uses_download  # noqa: F401  (server: the 127.0.0.1 fixture)

KINDS = [("img", 11), ("png", 2), ("tiny", 1), ("404", 2), ("500", 2), ("blocked", 1), ("invalid", 1)]
SETTINGS = [
    "number_sample_per_shard=10",
    "url_policy.allow_hosts=[127.0.0.1]",
    "image.min_image_size=8",
    "downloader.processes_count=1",
    "downloader.thread_count=4",
    "downloader.timeout=10",
    "columns.carry=[kind]",
    "retry.max_attempts=3",
]
TIMED = {"_done", "_stats"}  # per-unit files that carry times
IMG2DATASET_LOG = "_download/img2dataset.log"


def _config() -> DownloadConfig:
    return load_config(DownloadConfig, None, SETTINGS)


@pytest.fixture(scope="module")
def crawl(server, tmp_path_factory) -> Path:  # noqa: F811
    rows = [
        {"url": _url(server, kind, i), "text": f"a photo of {kind} {i}", "source": ["web", "forum"][i % 2],
         "kind": kind}
        for kind, count in KINDS
        for i in range(count)
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("crawl") / "crawl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def local_pool(crawl, tmp_path_factory) -> Path:
    pool = tmp_path_factory.mktemp("local") / "pool"
    report = download_crawl(crawl, pool, _config())
    assert not report.failed
    return pool


def local_files(pool: Path) -> dict[str, bytes]:
    return {p.relative_to(pool).as_posix(): p.read_bytes() for p in sorted(pool.rglob("*")) if p.is_file()}


def s3_files(s3, prefix: str) -> dict[str, bytes]:
    fs = s3.fs()
    return {k[len(prefix) + 1 :]: fs.cat_file(f"{s3.bucket}/{k}") for k in s3.keys(prefix)}


def tar_members(data: bytes) -> dict[str, bytes]:
    """Member name -> bytes (tar headers carry write times, which differ between runs)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def table(data: bytes, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(data)).sort_by(key)


def timeless_stats(data: bytes) -> list[dict]:
    stages = json.loads(data)["stages"]
    for s in stages:
        s["extra"] = {k: v for k, v in s.get("extra", {}).items() if "seconds" not in k}
    return stages


def assert_same_pool(ours: dict[str, bytes], ref: dict[str, bytes]) -> None:
    """The s3 pool ``ours`` holds what the local pool ``ref`` holds (see the module docstring)."""
    assert sorted(ours) == sorted(ref)
    shards = sorted(n.removesuffix(".tar") for n in ref if n.endswith(".tar"))
    assert len(shards) == 2
    for name, want in ref.items():
        got = ours[name]
        top = name.split("/")[0]
        if name.endswith(".tar"):
            assert tar_members(got) == tar_members(want), name
        elif name.removesuffix(".parquet") in shards:  # img2dataset writes rows in the order they finish
            assert table(got, "key").equals(table(want, "key")), name
        elif name.endswith("_stats.json") and "/" not in name:  # img2dataset's per-shard stats: timings
            a, b = json.loads(got), json.loads(want)
            assert (a["count"], a["successes"]) == (b["count"], b["successes"]), name
        elif top == "_stats":
            assert timeless_stats(got) == timeless_stats(want), name
        elif top == "_done" or name == IMG2DATASET_LOG:
            continue
        elif name == "_download/plan.json":
            a, b = json.loads(got), json.loads(want)
            for plan in (a, b):
                for part in plan["parts"]:
                    part.pop("file")  # where the crawl was read from
            assert a == b
        elif name == "_download/robots.json":
            a, b = json.loads(got), json.loads(want)
            assert a.keys() == b.keys()
            assert all({**a[k], "fetched_at": 0} == {**b[k], "fetched_at": 0} for k in a)
        else:  # input and rejected rows, the download verdicts: the same bytes
            assert got == want, name


def assert_clean(s3) -> None:
    """No object in the bucket holds the secret, and none is left over from an unfinished write."""
    keys = s3.keys()
    for key in keys:
        assert SECRET.encode() not in s3.fs().cat_file(f"{s3.bucket}/{key}"), key
    leftovers = [k for k in keys if k.split("/")[1] in ("_tmp", "_pending", ".staging", "_write_probe")]
    assert not leftovers


@pytest.fixture(scope="module")
def bucket(moto_server):
    """One bucket (and the AWS environment pointing at the server) for the module's downloads."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in aws_env(moto_server).items():
            mp.setenv(key, value)
        storage.reset_clients()
        s3 = S3(moto_server, f"download-{uuid.uuid4().hex[:12]}")
        s3.fs().mkdir(s3.bucket)
        yield s3
    storage.reset_clients()


@pytest.fixture(scope="module")
def s3_pool(bucket, crawl, local_pool) -> str:
    """The crawl uploaded into the bucket (a folder of one file), downloaded by the stage to s3."""
    storage.upload_dir(crawl.parent, f"{bucket.url}/crawl")
    inputs = DownloadInputs(crawl=f"{bucket.url}/crawl", out=f"{bucket.url}/pool")
    eng = get_engine("local")
    try:
        result = run_download(inputs, _config(), eng)
    finally:
        eng.close()
    assert not any(r.failed for r in result.reports)
    return "pool"


def copy_of(s3, prefix: str, name: str) -> str:
    """A copy of the pool under ``prefix``, for a test that changes it (server-side copies)."""
    fs = s3.fs()
    for key in s3.keys(prefix):
        fs.copy(f"{s3.bucket}/{key}", f"{s3.bucket}/{name}/{key[len(prefix) + 1 :]}")
    return name


@uses_download
def test_a_pool_on_s3_holds_what_a_local_pool_holds(bucket, s3_pool, local_pool):
    url = f"{bucket.url}/{s3_pool}"
    assert str(DownloadInputs(out=url).out) == url and storage.is_remote(url)
    assert_same_pool(s3_files(bucket, s3_pool), local_files(local_pool))
    assert_clean(bucket)
    funnel = Funnel([download_stats(url)])
    funnel.check()
    assert funnel.stages[0].total.to_dict() == download_stats(local_pool).total.to_dict()
    pool = Pool(url)  # the pool reads back through the storage layer
    assert pool.shard_ids() == ["00000", "00001"]
    verdicts = pool.read_attributes("download").sort_by("uid")
    assert verdicts.equals(Pool(local_pool).read_attributes("download").sort_by("uid"))
    # a rerun fetches nothing and writes nothing
    before = s3_files(bucket, s3_pool)
    report = download_crawl(f"{bucket.url}/crawl", url, _config())
    assert {o.status for o in report.outcomes} == {"skipped"}
    assert s3_files(bucket, s3_pool) == before


@uses_download
def test_a_rerun_after_a_kill_redoes_the_unfinished_shard_and_leaves_no_stray_object(
    bucket, s3_pool, local_pool
):
    name = copy_of(bucket, s3_pool, "killed")
    fs, root = bucket.fs(), f"{bucket.bucket}/{name}"
    # what a kill inside shard 00001 leaves: no img2dataset stats, no accounting marker, a torn tar,
    # img2dataset's shard input, a commit intent with the objects it was about to write
    for file in ("00001_stats.json", "_done/download-00001.done", "_stats/download-00001.json"):
        fs.rm_file(f"{root}/{file}")
    fs.pipe_file(f"{root}/00001.tar", fs.cat_file(f"{root}/00001.tar")[:700])
    fs.pipe_file(f"{root}/_tmp/1.feather", b"img2dataset's shard input")
    fs.pipe_file(f"{root}/attributes/download/stray.parquet", b"half")
    intent = {"shard": "download-00001", "objects": ["attributes/download/stray.parquet"]}
    fs.pipe_file(f"{root}/_pending/download-00001.json", json.dumps(intent).encode())
    report = download_crawl(f"{bucket.url}/crawl", f"{bucket.url}/{name}", _config())
    assert {o.shard: o.status for o in report.outcomes if o.status != "skipped"} == {"download-00001": "done"}
    assert_same_pool(s3_files(bucket, name), local_files(local_pool))
    assert_clean(bucket)


@uses_download
def test_sigkill_mid_download_into_s3_then_the_same_call_gives_the_local_pool_and_no_stray_object(
    bucket, s3_pool, local_pool
):
    import fsspec

    pool = f"{bucket.url}/sigkill"
    script = (
        "from curation.core.config import load_config\n"
        "from curation.download import DownloadConfig, download_crawl\n"
        f"cfg = load_config(DownloadConfig, None, {SETTINGS!r})\n"
        f"download_crawl({bucket.url + '/crawl'!r}, {pool!r}, cfg)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    fresh = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)

    def finished() -> list[str]:
        try:
            return fresh.glob(f"{bucket.bucket}/sigkill/*_stats.json")
        except FileNotFoundError:  # nothing under the prefix yet
            return []

    deadline = time.monotonic() + 240
    try:  # kill the whole process group (img2dataset's workers too) once the first shard is written
        while not finished():
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else "")[-3000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not fresh.exists(f"{bucket.bucket}/sigkill/_done/download-00001.done")
    report = download_crawl(f"{bucket.url}/crawl", pool, _config())
    assert not report.failed
    assert_same_pool(s3_files(bucket, "sigkill"), local_files(local_pool))
    assert_clean(bucket)


@uses_download
def test_retry_failed_on_s3_fetches_the_5xx_again_and_keeps_one_verdict_per_row(bucket, s3_pool):
    url = f"{bucket.url}/{copy_of(bucket, s3_pool, 'retried')}"
    before = download_stats(url)
    assert before.total.dropped["http_5xx"] == 2
    report = retry_failed(url, _config())
    assert not report.failed
    plan = read_json(f"{url}/_download/plan.json")
    assert [p["kind"] for p in plan["parts"]] == ["crawl", "retry"]
    after = download_stats(url)
    Funnel([after]).check()
    assert after.total.to_dict() == before.total.to_dict()  # still 500: the same verdicts, counted once
    assert Pool(url).shard_ids() == ["00000", "00001", "00002"]
    verdicts = Pool(url).read_attributes("download")
    assert verdicts.num_rows == len(set(verdicts["uid"].to_pylist())) == before.total.seen
    assert_clean(bucket)


def test_a_missing_bucket_is_one_clear_error_naming_the_url_before_any_work(bucket):
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket-h30/crawl\.parquet") as crawl_error:
        download_crawl("s3://no-such-bucket-h30/crawl.parquet", f"{bucket.url}/never", _config())
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-h30/pool") as pool_error:
        retry_failed("s3://no-such-bucket-h30/pool", _config())
    assert SECRET not in str(crawl_error.value) + str(pool_error.value)
    keys = bucket.keys()
    assert not [k for k in keys if k.startswith("never/")]


# --------------------------------------------------------------------------------------------
# memory:// (one process): the plan and the accounting; img2dataset itself is refused there


def _fake_img2dataset(args: dict, pending: dict[str, int], log_file, settings=None) -> None:
    """What img2dataset writes for the pending shards, through fsspec (input files in sorted order,
    one shard per row group): /404/ and /500/ urls fail with their HTTP error, the others succeed."""
    pool, number = storage.location(args["output_folder"]), 0
    for part in storage.list_files(args["url_list"], "*.parquet"):
        with part.open("rb") as f:
            file = pq.ParquetFile(f)
            groups = [file.read_row_group(i) for i in range(file.num_row_groups)]
        for sent in (g.to_pylist() for g in groups if g.num_rows):
            shard, number = f"{number:05d}", number + 1
            if shard not in pending:
                continue
            rows = []
            for i, r in enumerate(sent):
                code = next((c for c in ("404", "500") if f"/{c}/" in r["url"]), None)
                error = f"HTTP Error {code}" if code else None
                rows.append(
                    {"key": f"{int(shard) * 10 + i:06d}", "url": r["url"], "caption": r["caption"],
                     "uid": r["uid"], "source": r["source"], "error_message": error,
                     "status": "failed_to_download" if code else "success"}
                )  # fmt: skip
            storage.write_bytes(pool / f"{shard}.parquet", storage.parquet_bytes(pa.Table.from_pylist(rows)))
            storage.write_bytes(pool / f"{shard}_stats.json", json.dumps({"duration": 0.1}).encode())


def test_download_retry_and_append_work_on_memory_urls(crawl, server, monkeypatch):  # noqa: F811
    root = "memory://download-test"
    storage.remove(root, recursive=True)
    storage.write_bytes(f"{root}/crawl.parquet", crawl.read_bytes())
    monkeypatch.setattr(run_module, "run_img2dataset", _fake_img2dataset)
    pool = f"{root}/pool"
    report = download_crawl(f"{root}/crawl.parquet", pool, _config())
    (stage,) = report.stats
    assert (stage.total.seen, stage.total.kept) == (20, 14)
    assert dict(stage.total.dropped) == {"http_404": 2, "http_5xx": 2, "blocked_url": 1, "invalid_url": 1}
    assert [p.name for p in run_module.stats_files(pool)] == [
        "download-00000.json", "download-00001.json", "download-rejected-00000.json",
    ]  # fmt: skip
    again = download_crawl(f"{root}/crawl.parquet", pool, _config())
    assert {o.status for o in again.outcomes} == {"skipped"}
    # --retry-failed: the two 5xx rows are fetched again as shard 00002 (still 500: the same verdicts)
    retried = retry_failed(pool, _config())
    assert not retried.failed and download_stats(pool).total.to_dict() == stage.total.to_dict()
    assert [p["kind"] for p in read_json(f"{pool}/_download/plan.json")["parts"]] == ["crawl", "retry"]
    # --append: a later crawl slice, two of whose rows the pool has, becomes shard 00003
    old = pq.read_table(crawl).slice(0, 2).to_pylist()
    new = [{"url": _url(server, "img", 100 + i), "text": f"new {i}", "source": "web", "kind": "img"}
           for i in range(3)]  # fmt: skip
    storage.write_bytes(f"{root}/slice/crawl.parquet", storage.parquet_bytes(pa.Table.from_pylist(old + new)))
    appended = download_crawl(f"{root}/slice", pool, _config(), append=True)
    assert not appended.failed
    after = download_stats(pool)
    assert (after.total.seen, after.total.kept) == (23, 17)
    assert Pool(pool).shard_ids() == ["00000", "00001", "00002", "00003"]
    verdicts = Pool(pool).read_attributes("download")
    assert verdicts.num_rows == len(set(verdicts["uid"].to_pylist())) == 23
    storage.remove(root, recursive=True)


def test_img2dataset_into_memory_is_refused_with_a_clear_error():
    args = {"output_folder": "memory://nowhere/pool", "url_list": "memory://nowhere/pool/_download/input"}
    with pytest.raises(Img2datasetConfigError, match="memory:// lives inside one process"):
        run_img2dataset(args, {"00000": 1}, None)


# --------------------------------------------------------------------------------------------
# Spark and Ray: img2dataset's pyspark and ray distributors write into s3, the accounting runs there


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param("spark", marks=pytest.mark.spark), pytest.param("ray", marks=pytest.mark.ray)]
)
def test_spark_and_ray_download_into_s3_what_the_local_engine_downloads(name, bucket, s3_pool, local_pool):
    eng = get_engine(name, workers=2)
    try:
        report = download_crawl(f"{bucket.url}/crawl", f"{bucket.url}/{name}", _config(), eng)
    finally:
        eng.close()
    assert not report.failed
    assert_same_pool(s3_files(bucket, name), local_files(local_pool))
    assert_clean(bucket)


@pytest.mark.slow
def test_the_stage_serves_a_local_synthetic_web_and_downloads_it_into_s3(bucket, tmp_path):
    from curation.core.config import CONF_DIR
    from curation.synth import SynthConfig, generate

    sets = ["n_pairs=40", "workers=1", "suite.per_class=1", "suite.retrieval_pairs=1", "seed_set.n=1",
            "imagenet.per_class=1"]  # fmt: skip
    generate(load_config(SynthConfig, CONF_DIR / "synth" / "default.yaml", sets), tmp_path / "synth")
    storage.upload_dir(tmp_path / "synth", f"{bucket.url}/synth")  # the crawl on s3, the web served locally
    inputs = DownloadInputs(
        crawl=f"{bucket.url}/synth/crawl.parquet", out=f"{bucket.url}/served", serve=tmp_path / "synth"
    )
    cfg = load_config(
        DownloadConfig, CONF_DIR / "download" / "synthetic.yaml", ["downloader.processes_count=1"]
    )
    eng = get_engine("local")
    try:
        (report,) = run_download(inputs, cfg, eng).reports
    finally:
        eng.close()
    truth = pq.read_table(tmp_path / "synth" / "ground_truth.parquet").to_pylist()
    (stage,) = report.stats
    assert (stage.total.seen, stage.total.kept) == (len(truth), sum(t["downloadable"] for t in truth))
    assert not list(tmp_path.glob("*.crawl_local.parquet"))
    keys = bucket.keys()
    assert not [k for k in keys if "crawl_local" in k]  # the rebased crawl was a local temp file
    assert_clean(bucket)
