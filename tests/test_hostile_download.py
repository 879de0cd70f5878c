"""curate download against a hostile crawl: huge and lying images, a killed worker, redirects to blocked
hosts, and the small configuration traps; every test runs the real CLI (img2dataset really downloads
from servers on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core.config import ConfigError, load_config
from curation.download import DownloadConfig
from curation.download.plan import CrawlError, read_crawl
from tests.hostile_web import Route, WebServer, jpeg_bytes, jpeg_claiming, png_bytes, serve

SETTINGS = [
    "number_sample_per_shard=10",
    "url_policy.allow_hosts=[127.0.0.1]",
    "downloader.thread_count=4",
    "downloader.timeout=5",
]
GiB = 1 << 30


def _cli(crawl: Path, pool: Path, *settings: str) -> list[str]:
    args = [sys.executable, "-m", "pipelines", "download", str(crawl), "--out", str(pool)]
    return args + [a for s in [*SETTINGS, *settings] for a in ("--set", s)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "200"}


def _write_crawl(path: Path, urls: list[str]) -> Path:
    rows = [{"url": u, "text": f"caption {i}"} for i, u in enumerate(urls)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _verdicts(pool: Path) -> list[dict]:
    files = sorted((pool / "attributes" / "download").glob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files).to_pylist()


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(PSS, RSS) summed over ``proc`` and its descendants. PSS shares each shared page out among the
    processes mapping it (every worker maps the same torch libraries), so it is the tree's real
    footprint; RSS counts those pages once per process."""
    pss = rss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        pss += info.pss
        rss += info.rss
    return pss, rss


def _run_measured(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, int, int]:
    """Run ``args``; return its result and the peak PSS and RSS of its whole process tree."""
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, deadline = psutil.Process(proc.pid), time.monotonic() + timeout
    peak_pss = peak_rss = 0
    while proc.poll() is None and time.monotonic() < deadline:
        pss, rss = _tree_memory(ps)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0]
    return subprocess.CompletedProcess(args, proc.returncode, out), peak_pss, peak_rss


# --------------------------------------------------------------------------------------------
# huge images


@pytest.mark.slow
def test_huge_and_lying_images_are_refused_from_their_header_and_memory_stays_bounded(tmp_path):
    web = WebServer()
    huge = png_bytes(20000, 30000, noisy_rows=1200)  # 600 Mpx, a few MB on disk
    bomb = png_bytes(30000, 30000)  # 900 Mpx of zeros in ~100 kB
    rgba = png_bytes(6000, 6000, color_type=6, bit_depth=8)  # 36 Mpx, but alpha matting costs ~2 GB
    web.routes = {
        "/huge.png": Route(huge, ctype="image/png"),
        "/bomb.png": Route(bomb, ctype="image/png"),
        "/liar.jpg": Route(jpeg_claiming(65500, 65500)),
        "/rgba.png": Route(rgba, ctype="image/png"),
        **{f"/img/{i}.jpg": Route(jpeg_bytes(i)) for i in range(12)},
    }
    print(f"\nhuge.png {len(huge) / 2**20:.1f} MB, bomb.png {len(bomb) / 2**10:.0f} kB, "
          f"rgba.png {len(rgba) / 2**10:.0f} kB")  # fmt: skip
    with serve(web):
        paths = ["/huge.png", "/bomb.png", "/liar.jpg", "/rgba.png", *(f"/img/{i}.jpg" for i in range(12))]
        crawl = _write_crawl(tmp_path / "crawl.parquet", [web.url(p) for p in paths])
        result, peak, peak_rss = _run_measured(
            _cli(crawl, tmp_path / "pool", "downloader.processes_count=2"), timeout=300
        )
    print(result.stdout[-3000:])
    print(
        f"peak memory of the download's process tree: {peak / 2**20:,.0f} MiB PSS "
        f"({peak_rss / 2**20:,.0f} MiB RSS summed, shared libraries counted once per process)"
    )
    assert result.returncode == 0, result.stdout
    verdicts = {r["url"].split("/", 3)[-1]: r for r in _verdicts(tmp_path / "pool")}
    assert len(verdicts) == len(paths)  # every url accounted for
    for name in ("huge.png", "bomb.png", "liar.jpg", "rgba.png"):
        assert verdicts[name]["download_reason"] == "image_too_large", verdicts[name]
    assert "20000x30000" in verdicts["huge.png"]["error_message"]
    assert "65500x65500" in verdicts["liar.jpg"]["error_message"]
    assert "max_decoded_bytes" in verdicts["rgba.png"]["error_message"]
    assert all(verdicts[f"img/{i}.jpg"]["download_keep"] for i in range(12))
    assert peak < 2 * GiB


# --------------------------------------------------------------------------------------------
# a worker killed mid-shard


def _worker_with_connection(root: psutil.Process, port: int, timeout: float) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in root.children(recursive=True):
            try:
                if any(c.raddr and c.raddr.port == port for c in p.net_connections(kind="tcp")):
                    return p
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError("no download worker connected to the server")


@pytest.mark.slow
def test_a_worker_killed_mid_shard_fails_its_shard_quickly_and_a_rerun_completes_it(tmp_path):
    web = WebServer(delay=0.3)
    web.routes = {f"/img/{i}.jpg": Route(jpeg_bytes(i)) for i in range(20)}
    with serve(web):
        crawl = _write_crawl(tmp_path / "crawl.parquet", [web.url(f"/img/{i}.jpg") for i in range(20)])
        args = _cli(crawl, tmp_path / "pool", "downloader.processes_count=2", "downloader.max_shard_retry=0")
        proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim = _worker_with_connection(psutil.Process(proc.pid), web.port, timeout=240)
        victim.send_signal(signal.SIGKILL)  # as the kernel's out-of-memory killer would
        killed = time.monotonic()
        out = proc.communicate(timeout=240)[0]
        waited = time.monotonic() - killed
        print(out[-3000:])
        print(f"the command exited {waited:.1f} s after the worker was killed")
        flat = " ".join(out.split())
        failed = sorted((tmp_path / "pool" / "_download" / "failed").glob("*.json"))
        assert proc.returncode == 1 and waited < 60
        assert len(failed) == 1 and f"download-{failed[0].stem}" in flat
        assert "worker died: killed by SIGKILL" in flat
        assert not list((tmp_path / "pool").glob(f"{failed[0].stem}.*"))  # no torn tar, no footerless parquet
        other = {"00000": "00001", "00001": "00000"}[failed[0].stem]
        assert (tmp_path / "pool" / f"{other}_stats.json").exists()  # the rest of the job finished
        web.delay = 0.0
        rerun = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    verdicts = _verdicts(tmp_path / "pool")
    assert len(verdicts) == 20 and all(r["download_keep"] for r in verdicts)
    assert not list((tmp_path / "pool" / "_download" / "failed").glob("*.json"))


# --------------------------------------------------------------------------------------------
# redirects


@pytest.mark.slow
def test_every_redirect_hop_goes_through_the_url_policy(tmp_path):
    blocked = WebServer()
    blocked.routes = {"/secret.jpg": Route(jpeg_bytes(99))}
    allowed = WebServer()
    with serve(blocked), serve(allowed):
        secret = blocked.url("/secret.jpg", "localhost")  # localhost stays blocked: 127.0.0.1 is allowed
        allowed.routes = {
            "/one-hop": Route(code=302, location=secret),
            "/two-hops": Route(code=302, location=allowed.url("/hop")),
            "/hop": Route(code=301, location=secret),
            "/fine": Route(code=302, location=allowed.url("/img/0.jpg")),
            "/img/0.jpg": Route(jpeg_bytes(0)),
            "/img/1.jpg": Route(jpeg_bytes(1)),
        }
        crawl = _write_crawl(
            tmp_path / "crawl.parquet",
            [allowed.url(p) for p in ("/one-hop", "/two-hops", "/fine", "/img/1.jpg")],
        )
        result = subprocess.run(
            _cli(crawl, tmp_path / "pool", "downloader.processes_count=1"),
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert blocked.requests == []  # the blocked host never received a request
    verdicts = {r["url"].rsplit("/", 1)[-1]: r for r in _verdicts(tmp_path / "pool")}
    for name, last_hop in (("one-hop", allowed.url("/one-hop")), ("two-hops", allowed.url("/hop"))):
        assert verdicts[name]["download_reason"] == "blocked_redirect"
        assert f"{last_hop} -> {secret}" in verdicts[name]["error_message"]
    assert verdicts["fine"]["download_keep"] and verdicts["1.jpg"]["download_keep"]
    pool_rows = {r["url"]: r for r in pq.read_table(tmp_path / "pool" / "00000.parquet").to_pylist()}
    assert pool_rows[allowed.url("/fine")]["final_url"] == allowed.url("/img/0.jpg")
    assert pool_rows[allowed.url("/img/1.jpg")]["final_url"] == allowed.url("/img/1.jpg")


# --------------------------------------------------------------------------------------------
# the smaller traps


def test_an_integer_url_column_is_a_type_error_naming_the_column(tmp_path):
    crawl = tmp_path / "crawl.parquet"
    pq.write_table(pa.table({"url": [1, 2], "text": ["a", "b"]}), crawl)
    with pytest.raises(CrawlError, match=r"column 'url' of type int64 is not text"):
        read_crawl(crawl, DownloadConfig().columns)


def test_an_all_blocked_crawl_warns_and_exits_non_zero_unless_expected(tmp_path):
    crawl = _write_crawl(tmp_path / "crawl.parquet", ["http://localhost/a.jpg", "http://10.0.0.1/b.jpg"])
    result = subprocess.run(_cli(crawl, tmp_path / "pool"), env=_env(), capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "url_policy.allow_hosts" in " ".join(result.stderr.split())
    ok = subprocess.run(
        _cli(crawl, tmp_path / "pool2", "url_policy.expect_all_blocked=true"),
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_png_with_a_jpeg_quality_is_a_one_line_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"image\.encode_quality is 95.*PNG compression level, 0 to 9"):
        load_config(DownloadConfig, None, ["image.encode_format=png", "image.encode_quality=95"])
    crawl = _write_crawl(tmp_path / "crawl.parquet", ["http://example.com/a.jpg"])
    result = subprocess.run(
        _cli(crawl, tmp_path / "pool", "image.encode_format=png"), env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "image.encode_quality" in result.stderr


def test_set_takes_no_on_off_as_strings_for_a_string_field():
    cfg = load_config(DownloadConfig, None, ["image.resize_mode=no", "columns.caption=off"])
    assert cfg.image.resize_mode == "no" and cfg.columns.caption == "off"
    assert load_config(DownloadConfig, None, ["image.skip_reencode=no"]).image.skip_reencode is False


def test_failure_reasons_of_the_guards():
    from curation.download.failures import failure_reason

    messages = {
        "blocked redirect: http://a.example/x -> http://localhost/y (special-use host)": "blocked_redirect",
        "image_too_large: 20000x30000 = 600,000,000 pixels": "image_too_large",
        "body_too_large: over limits.max_body_bytes=10": "body_too_large",
    }
    for message, reason in messages.items():
        assert failure_reason("failed_to_download", message) == reason


def test_fetch_caps_the_body_and_checks_each_hop_in_process():
    from curation.download.redirects import FetchGuard, fetch_image

    blocked, allowed = WebServer(), WebServer()
    with serve(blocked), serve(allowed):
        allowed.routes = {
            "/big.jpg": Route(b"x" * 5000),
            "/hop": Route(code=307, location=blocked.url("/x.jpg", "localhost")),
            "/ok": Route(code=302, location=allowed.url("/small.jpg")),
            "/small.jpg": Route(b"y" * 10),
        }
        guard = FetchGuard(("127.0.0.1",), max_body_bytes=1000)

        def fetch(key: int, path: str) -> tuple:
            return fetch_image((key, allowed.url(path)), 5, None, None, guard=guard)

        assert fetch(0, "/big.jpg")[2].startswith("body_too_large: ")
        _, body, error = fetch(1, "/ok")
        assert error is None and body.read() == b"y" * 10 and guard.final_urls[1] == allowed.url("/small.jpg")
        assert fetch(2, "/hop")[2].startswith(f"blocked redirect: {allowed.url('/hop')} -> http://localhost:")
    assert blocked.requests == []


def test_an_img2dataset_setting_error_is_a_one_line_config_error(monkeypatch, tmp_path):
    from curation.download import fetch

    def refuses(**_: object) -> None:
        raise ValueError("Invalid option for resize_mode: sideways")

    monkeypatch.setattr(fetch, "img2dataset_download", lambda: refuses)
    with pytest.raises(ConfigError, match=r"img2dataset refused the download settings: Invalid option"):
        fetch.run_img2dataset({"output_folder": str(tmp_path)}, {"00000": 1}, None)
