"""Crash and resume, per stage: the real CLI is SIGKILLed mid-job (see tests/crashkit.py), rerun to
completion, and must leave exactly what an uninterrupted run leaves: the same files with the same
content, nothing duplicated, nothing lost, no staging or temp file.

Each shard stage is killed at every write point of ``SHARD_KILL_POINTS`` in turn (inside a staged
output write, inside a stats write, inside a marker write, after a marker write), deterministically:
the kill happens in the write itself, so a test cannot pass or fail by where the timing lands.
Twenty runs in a row: ``for i in $(seq 20); do pytest -q tests/test_resume.py -k filter || break; done``.

Training resumes the same way; its test is
tests/test_trainer.py::test_killed_run_resumes_to_identical_weights.
Each test launches the CLI twice (killed, rerun; the reference runs in process), and a CLI start
imports torch and open_clip, so they are marked slow.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.core.pool import Pool
from curation.core.subset import Subset
from curation.download.run import download_stats
from pipelines.app import app
from tests.conftest import write_metadata_pool
from tests.crashkit import (
    SHARD_KILL_POINTS,
    KillPoint,
    assert_no_partial_files,
    assert_same_outputs,
    kill_at,
    kill_mid_job,
    run_to_completion,
    tar_members,
)
from tests.image_pool import write_image_pool
from tests.test_hardmatch import write_crawl

pytestmark = pytest.mark.slow


def in_process(args: list[str]) -> None:
    """The uninterrupted reference run (in this process: one CLI start less per test)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def twin(base: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two identical copies of an input that a stage writes into (score and filter write into the pool)."""
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    shutil.copytree(base, ref)
    shutil.copytree(base, crashed)
    return ref, crashed


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


POINTS = pytest.mark.parametrize("point", SHARD_KILL_POINTS, ids=lambda p: p.name)


def killed_at(args: list, point: KillPoint, out: Path, scratch: Path) -> None:
    """Kill the command at ``point`` and check the kill left what it should (then rerun sweeps it)."""
    kill_at(args, point, scratch)
    if point.phase == "inside":
        leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".staging" in p.parts]
        assert leftovers, f"the kill inside {point.glob} left no temp file or staging folder in {out}"


@POINTS
def test_filter_resumes_after_sigkill(tmp_path, point):
    ref, crashed = twin(write_metadata_pool(tmp_path / "base", n_shards=40, per_shard=20), tmp_path)
    conf = tmp_path / "filters.yaml"
    conf.write_text("name: filters\nfilters:\n  - {kind: caption_length, name: caption}\n")
    in_process(["filter", ref, "-c", conf])
    killed_at(["filter", crashed, "-c", conf], point, crashed, tmp_path)
    run_to_completion(["filter", crashed, "-c", conf])
    assert_no_partial_files(crashed)
    files = assert_same_outputs(ref, crashed)
    assert sum(f.startswith("attributes/filters/_done/") for f in files) == 40


@POINTS
def test_score_resumes_after_sigkill(tmp_path, point):
    from tests.test_scoring import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pt", seed=0)
    ref, crashed = twin(
        write_image_pool(tmp_path / "base", n_shards=12, per_shard=6, failed_every=4), tmp_path
    )

    def args(pool: Path) -> list:
        return ["score", pool, "-m", "tiny-vit", "-p", ckpt, "--device", "cpu", "--set", "loader_workers=0"]

    in_process(args(ref))
    killed_at(args(crashed), point, crashed, tmp_path)
    run_to_completion(args(crashed))
    assert_no_partial_files(crashed)
    files = assert_same_outputs(ref, crashed)
    assert sum("/_done/" in f for f in files) == 12


def _pool_with_scores(root: Path, n_shards: int) -> Path:
    """A metadata pool plus a ``quality`` attribute table, so select gathers shard by shard."""
    pool = write_metadata_pool(root, n_shards=n_shards, per_shard=20)
    p = Pool(pool)
    rng = np.random.default_rng(0)
    out = p.attributes_dir("quality")
    out.mkdir(parents=True)
    for shard in p.shard_ids():
        uids = p.read_samples(shard)["uid"]
        score = pa.array(np.round(rng.random(len(uids)), 2), pa.float32())
        pq.write_table(pa.table({"uid": uids, "quality": score}), out / f"{shard}.parquet")
    return pool


@POINTS
def test_select_resumes_after_sigkill(tmp_path, point):
    pool = _pool_with_scores(tmp_path / "pool", n_shards=40)
    step = "topk: {score: {stage: quality, column: quality}, fraction: 0.3}"
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"

    def args(out: Path) -> list:
        return ["select", pool, "--out", out / "top30.npy", "--step", step]

    in_process(args(ref))
    killed_at(args(crashed), point, crashed, tmp_path / "scratch")
    assert not (crashed / "top30.npy").exists()  # the subset appears whole or not at all
    run_to_completion(args(crashed))
    assert_no_partial_files(crashed)
    assert assert_same_outputs(ref, crashed) == ["top30.json", "top30.npy", "top30.stats.json"]
    subset = Subset.load(crashed / "top30.npy")
    assert len(subset) == subset.unique_count() > 0


@POINTS
def test_reshard_resumes_after_sigkill(tmp_path, point):
    pool = write_image_pool(tmp_path / "pool", n_shards=4, per_shard=15)
    p = Pool(pool)
    uids = [u for s in p.shard_ids() for u in p.read_samples(s)["uid"].to_pylist()]
    subset = Subset.from_hex(uids + uids[:7], {"name": "all"}).save(tmp_path / "all.npy")
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"

    def args(out: Path) -> list:
        return ["reshard", pool, subset, "--out", out, "--set", "shard_size=3"]

    in_process(args(ref))
    killed_at(args(crashed), point, crashed, tmp_path / "scratch")
    run_to_completion(args(crashed))
    assert_no_partial_files(crashed)
    files = assert_same_outputs(ref, crashed)
    assert sum(f.endswith(".tar") for f in files) == -(-(len(uids) + 7) // 3)


@POINTS
def test_hardmatch_resumes_after_sigkill(tmp_path, point):
    crawl = write_crawl(tmp_path / "crawl", n=3000)
    table = pq.read_table(crawl["crawl"])
    pq.write_table(table, crawl["crawl"], row_group_size=60)  # 50 shards
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"

    def args(out: Path) -> list:
        return ["hardmatch", crawl["crawl"], "--classes", crawl["classes"], "--synonyms", crawl["synonyms"],
                "--out", out]  # fmt: skip

    in_process(args(ref))
    killed_at(args(crashed), point, crashed, tmp_path / "scratch")
    run_to_completion(args(crashed))
    assert_no_partial_files(crashed)
    files = assert_same_outputs(ref, crashed, ignore=["report.md"])
    assert "hardmatch.npy" in files and sum("/_done/" in f for f in files) == 50


# ---------------------------------------------------------------- download, from a server on 127.0.0.1

N_URLS, PER_SHARD = 100, 10
DELAY_S = 0.03  # per image: the download takes a few seconds, so the kill lands inside it


@pytest.fixture
def slow_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    images = {}
    for i in range(N_URLS):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (i * 37 % 256, i * 91 % 256, 120)).save(buf, "JPEG")
        images[f"/img/{i}.jpg"] = buf.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(DELAY_S)
            body = images.get(self.path)
            try:
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")
            except (BrokenPipeError, ConnectionResetError):  # a killed client
                pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", images
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_after_sigkill(tmp_path, slow_server):
    """Compared with the crawl's ground truth rather than a third run: img2dataset writes rows and
    tar members in completion order, so two clean runs differ in order only, and each run here
    costs a CLI start plus img2dataset's worker start."""
    server, images = slow_server
    rows = [{"url": f"{server}/img/{i if i % 9 else 1000 + i}.jpg", "text": f"a photo number {i}",
             "source": ("web", "forum")[i % 2]} for i in range(N_URLS)]  # fmt: skip
    crawl = tmp_path / "crawl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), crawl)
    settings = [
        f"number_sample_per_shard={PER_SHARD}",
        "url_policy.allow_hosts=[127.0.0.1]",
        "image.min_image_size=8",
        "downloader.processes_count=1",
        "downloader.thread_count=2",
    ]
    pool = tmp_path / "pool"
    args = ["download", crawl, "--out", pool, *[a for s in settings for a in ("--set", s)]]
    kill_mid_job(args, pool, "0*_stats.json", seed=6)
    run_to_completion(args)
    assert_no_partial_files(pool)

    table = pa.concat_tables(pq.read_table(p) for p in sorted(pool.glob("0*.parquet")))
    assert sorted(table["url"].to_pylist()) == sorted(r["url"] for r in rows)  # each row once
    ok = {r["url"] for i, r in enumerate(rows) if i % 9}  # the others are 404s
    got = {
        u: (st, sha)
        for u, st, sha in zip(*(table[c].to_pylist() for c in ("url", "status", "sha256")), strict=True)
    }
    assert {u for u, (st, _) in got.items() if st == "success"} == ok
    served = {f"{server}{path}": hashlib.sha256(body).hexdigest() for path, body in images.items()}
    assert all(got[u][1] == served[u] for u in ok)
    members = [n for tar in sorted(pool.glob("0*.tar")) for n, _ in tar_members(tar)]
    assert len(members) == len(set(members)) == 3 * len(ok)  # jpg, txt, json of each success once
    stats = download_stats(pool)
    stats.check_balanced()
    assert stats.total.seen == N_URLS and stats.total.kept == len(ok)
    assert dict(stats.total.dropped) == {"http_404": N_URLS - len(ok)}
