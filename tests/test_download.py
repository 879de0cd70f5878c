"""curate download: url policy, img2dataset into a pool against a real HTTP server on 127.0.0.1,

(Over 400 lines: one file per command; its tests share the local HTTP server fixtures.)
accounting of every row, reruns and resumes, and the CLI."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.cards.data import pool_stage_stats
from curation.core.config import CONF_DIR, ConfigError, load_config
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.core.uid import compute_uid
from curation.download import (
    CrawlError,
    DownloadConfig,
    PlanMismatch,
    download_crawl,
    download_stats,
    stats_files,
)
from curation.download import run as run_module
from curation.download.failures import failure_reason
from curation.download.fetch import img2dataset_arguments, img2dataset_download
from curation.download.urlpolicy import BLOCKED_URL, INVALID_URL, UrlPolicy, parse_ipv4
from curation.engines import run_job
from curation.filtering.job import FilterJob
from pipelines import options as cliutil
from pipelines.app import app

# --------------------------------------------------------------------------------------------
# URL policy


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.jpg",
        "http://127.8.9.10:8080/a.jpg",
        "http://2130706433/",  # decimal
        "http://0x7f000001/",  # one hex number
        "http://0x7f.1/",  # hex, two parts
        "http://0177.0.0.1/",  # octal
        "http://127.1/",  # short form
        "http://0x7f.0x0.0x0.0x1/",
        "http://%31%32%37.0.0.1/",  # percent-encoded (urllib decodes the host)
        "http://１２７.０.０.１/",  # fullwidth digits (IDNA maps them to ASCII)
        "http://127。0。0。1/",  # ideographic full stops
        "http://127.0.0.1./",  # trailing dot
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
        "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::7f00:1]/",  # NAT64 wrapping 127.0.0.1
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://100.64.0.1/",  # shared address space (carrier NAT)
        "http://169.254.1.1/",  # link-local
        "http://[fe80::1%25eth0]/",
        "http://[fc00::1]/",  # unique local
        "http://224.0.0.1/",  # multicast
        "http://[ff02::1]/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
        "http://240.0.0.1/",  # reserved
        "http://255.255.255.255/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./x",
        "http://metadata/x",
        "http://localhost/",
        "http://LOCALHOST:8000/",
        "http://localhost./",
        "http://images.localhost/",
        "http://printer.local/",
        "http://intranet/a.jpg",  # single label: resolves through search domains
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
    ],
)
def test_policy_blocks_local_private_metadata_and_other_schemes(url):
    verdict = UrlPolicy().check(url)
    assert verdict is not None and verdict[0] == BLOCKED_URL, verdict


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "example.com/a.jpg",  # no scheme
        "http://",
        "http:///a.jpg",
        "http://exa mple.com/a.jpg",
        " http://example.com/a.jpg",
        "http://example.com/a\n.jpg",
        "http://example.com:99999/",
        "http://example.com:port/",
        "http://[::1/",
        "http://[zz::1]/",
        "http://user:pw@example.com/",  # parsers disagree on credentials: reject
        "http://127.0.0.1\\@example.com/",
        "http://1.2.3.4.5/",
        "http://4294967296/",
        "http://09.1.1.1/",  # 9 is not an octal digit
        "http://-bad.example.com/",
        "http://a..example.com/",
    ],
)
def test_policy_rejects_malformed_urls(url):
    verdict = UrlPolicy().check(url)
    assert verdict is not None and verdict[0] == INVALID_URL, verdict


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.jpg",
        "https://img.example.co.uk/p/a%20b.jpg?w=200#x",
        "HTTPS://Example.COM/A.JPG",
        "http://example.com:8080/a.jpg",
        "http://example.com./a.jpg",
        "http://8.8.8.8/a.jpg",
        "http://[2606:4700::1111]/a.jpg",
        "http://[2002:808:808::]/",  # 6to4 of a public address
        "http://ñandú.example/a.jpg",
        "http://xn--and-6ma2c.example/a.jpg",
        "http://cdn_1.example.com/a.jpg",
    ],
)
def test_policy_passes_public_urls(url):
    assert UrlPolicy().check(url) is None


def test_allow_hosts_exempts_exactly_what_is_listed():
    policy = UrlPolicy(["127.0.0.1", "10.0.0.0/8", "images.internal"])
    assert policy.check("http://127.0.0.1:8000/a.jpg") is None
    assert policy.check("http://2130706433:8000/a.jpg") is None  # the same address, spelled otherwise
    assert policy.check("http://10.200.0.1/a.jpg") is None
    assert policy.check("http://images.internal/a.jpg") is None
    for still_blocked in ["http://127.0.0.2/", "http://localhost/", "http://[::1]/", "http://192.168.0.1/"]:
        assert policy.check(still_blocked)[0] == BLOCKED_URL, still_blocked
    assert policy.check("ftp://127.0.0.1/a.jpg")[0] == BLOCKED_URL  # hosts only, never schemes
    assert policy.check("http://127.0.0.1:99999/")[0] == INVALID_URL
    with pytest.raises(ValueError, match="not a host name"):
        UrlPolicy(["not a host"])


def test_inet_aton_forms():
    assert str(parse_ipv4("3232235521")) == "192.168.0.1"
    assert str(parse_ipv4("0xc0.0xa8.0.1")) == "192.168.0.1"
    assert str(parse_ipv4("0300.0250.0.01")) == "192.168.0.1"
    assert str(parse_ipv4("192.168.1")) == "192.168.0.1"
    assert str(parse_ipv4("192.11010049")) == "192.168.0.1"
    assert parse_ipv4("256.1.1.1") is None
    assert parse_ipv4("1.2.3.4.5") is None


def test_vectorised_classify_agrees_with_check():
    urls = [
        "http://example.com/a.jpg",
        "http://foo.localhost/a.jpg",
        "http://Foo.LOCAL/a.jpg",
        "http://metadata.google.internal/",
        "http://metadata.goog/",
        "http://127.0.0.1:9/a.jpg",
        "http://0x7f.1/",
        "http://a.b.c.example.org/x?y#z",
        "http://-x.example.com/",
        "http://x-.example.com/",
        "http://example.123/",
        "http://example.0x1f/",
        "https://sub.example.com",
        None,
        "ftp://example.com/",
        "http://exa mple.com/",
    ] * 3
    policy = UrlPolicy(["127.0.0.1"])
    reasons, details = policy.classify(pa.chunked_array([urls[:20], urls[20:]], pa.string()))
    expected = [policy.check(u) for u in urls]
    got = [
        None if r is None else (r, d) for r, d in zip(reasons.to_pylist(), details.to_pylist(), strict=True)
    ]
    assert got == expected


def test_failure_messages_map_to_short_reasons():
    cases = {
        ("failed_to_download", "HTTP Error 404: Not Found"): "http_404",
        ("failed_to_download", "HTTP Error 410: Gone"): "http_4xx",
        ("failed_to_download", "HTTP Error 503: Service Unavailable"): "http_5xx",
        ("failed_to_download", "<urlopen error timed out>"): "timeout",
        ("failed_to_download", "The read operation timed out"): "timeout",
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>"): "connection_error",
        ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>"): "dns_error",
        ("failed_to_download", "IncompleteRead(100 bytes read, 577 more expected)"): "truncated",
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive"): "opted_out",
        ("failed_to_resize", "Image decoding error"): "decode_error",
        ("failed_to_resize", "image too small"): "too_small",
        ("failed_to_resize", "aspect ratio too large"): "bad_aspect_ratio",
        ("failed_to_download", "something new"): "download_error",
        ("failed_to_resize", "OpenCV(4.x) error"): "resize_error",
        ("success", None): None,
    }
    for (status, message), reason in cases.items():
        assert failure_reason(status, message) == reason, (status, message)


# --------------------------------------------------------------------------------------------
# A crawl served by a real HTTP server on 127.0.0.1

SLOW_S = 2.5
TIMEOUT_S = 1
# Tests on the shared img2dataset run: its start-up (spawned workers importing torch through
# webdataset) takes ~15 s on 2 idle cores and much more on a busy machine.
uses_download = pytest.mark.slow


def _image_bytes(i: int, fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 37 % 256, i * 91 % 256, 120)).save(buf, fmt)
    return buf.getvalue()


@dataclass
class FixtureServer:
    """Serves /img/<n>.jpg, /png/<n>.png, /tiny/<n>.jpg, /404, /500, /corrupt, /html, /slow; logs paths."""

    port: int = 0
    requests: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[FixtureServer]:
    state = FixtureServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            kind = self.path.split("/")[1]
            if kind == "slow":
                time.sleep(SLOW_S)
            if self.path in state.files:
                code, body, ctype = 200, state.files[self.path], "image/jpeg"
            elif kind == "corrupt":
                code, body, ctype = 200, b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4, "image/jpeg"
            elif kind == "html":
                code, body, ctype = 200, b"<html><body>an error page</body></html>", "text/html"
            elif kind == "500":
                code, body, ctype = 500, b"internal error", "text/plain"
            else:
                code, body, ctype = 404, b"not found", "text/plain"
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # img2dataset opens many connections at once

    httpd = Server(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


# (kind, count, expected reason) of the fixture crawl; reason None: downloads
CRAWL_KINDS = [
    ("img", 24, None),
    ("png", 2, None),
    ("tiny", 2, "too_small"),
    ("404", 3, "http_404"),
    ("500", 2, "http_5xx"),
    ("corrupt", 2, "decode_error"),
    ("html", 1, "decode_error"),
    ("slow", 1, "timeout"),
    ("refused", 1, "connection_error"),
    ("blocked", 6, "blocked_url"),
    ("invalid", 3, "invalid_url"),
    ("bad_uid", 1, "invalid_uid"),
]
EXPECTED = sum((Counter({reason or "kept": n}) for _, n, reason in CRAWL_KINDS), Counter())
SETTINGS = [
    "number_sample_per_shard=10",
    "url_policy.allow_hosts=[127.0.0.1]",
    "image.min_image_size=8",
    "downloader.processes_count=1",
    "downloader.thread_count=8",
    f"downloader.timeout={TIMEOUT_S}",
    "columns.carry=[kind]",
    "robots.enabled=false",  # these tests are about img2dataset's outcomes; tests/test_polite.py has robots
]


def _url(server: FixtureServer, kind: str, i: int) -> str | None:
    """The url of the i-th row of ``kind``; registers the image bytes the server will send."""
    images = {
        "img": ("jpg", "JPEG", (48, 32)),
        "png": ("png", "PNG", (48, 32)),
        "tiny": ("jpg", "JPEG", (4, 4)),
    }
    if kind in images:
        ext, fmt, size = images[kind]
        server.files[f"/{kind}/{i}.{ext}"] = _image_bytes(i, fmt, size)
        return server.url(f"/{kind}/{i}.{ext}")
    if kind == "blocked":
        return [
            server.url("/blocked/0.jpg", "localhost"),  # would reach the server if fetched
            server.url("/blocked/1.jpg", "127.0.0.2"),
            server.url("/blocked/2.jpg", "[::1]"),
            server.url("/blocked/3.jpg", "0x7f.0.0.2"),
            f"ftp://127.0.0.1:{server.port}/blocked/4.jpg",
            "http://169.254.169.254/latest/meta-data/",
        ][i]
    if kind == "invalid":
        return [None, "not a url", server.url("/invalid/ 2.jpg")][i]
    if kind == "refused":
        return f"http://127.0.0.1:1/{i}.jpg"  # nothing listens on port 1
    return server.url(f"/{kind}/{i}.jpg")


def _crawl_rows(server: FixtureServer) -> list[dict]:
    """Every failure kind, two sources, a third of the rows without a uid, the others upper case."""
    rows: list[dict] = []
    for kind, count, _ in CRAWL_KINDS:
        for i in range(count):
            n = len(rows)
            uid = "not-a-uid" if kind == "bad_uid" else (f"{n:032X}" if n % 3 else None)
            rows.append(
                {"url": _url(server, kind, i), "text": f"a photo of {kind} {i}", "uid": uid,
                 "source": ["web", "forum"][n % 2], "kind": kind}
            )  # fmt: skip
    return rows


def _set_args() -> list[str]:
    return [arg for setting in SETTINGS for arg in ("--set", setting)]


def _config(**overrides: object) -> DownloadConfig:
    return load_config(DownloadConfig, None, SETTINGS + [f"{k}={v}" for k, v in overrides.items()])


@dataclass
class Downloaded:
    crawl: Path
    pool: Path
    rows: list[dict]
    requests: list[str]
    seconds: float
    cli_output: str


@pytest.fixture(scope="module")
def downloaded(server: FixtureServer, tmp_path_factory: pytest.TempPathFactory) -> Downloaded:
    """One download through the CLI; the tests below inspect what it left behind."""
    root = tmp_path_factory.mktemp("download")
    rows = _crawl_rows(server)
    crawl = root / "crawl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), crawl)
    pool = root / "pool"
    args = ["download", str(crawl), "--out", str(pool), *_set_args()]
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cliutil.console, "width", 200)  # the funnel table unabridged
        result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    return Downloaded(crawl, pool, rows, list(server.requests), seconds, result.output)


def _funnel(pool: Path) -> Funnel:
    return Funnel([download_stats(pool)])


@uses_download
def test_funnel_counts_every_row_with_its_reason(downloaded):
    funnel = _funnel(downloaded.pool)
    funnel.check()  # seen == kept + dropped, overall and per source
    (stage,) = funnel.stages
    assert stage.stage == "download"
    assert stage.total.seen == len(downloaded.rows)
    assert Counter({"kept": stage.total.kept, **stage.total.dropped}) == EXPECTED
    sources = Counter(r["source"] for r in downloaded.rows)
    assert {s: c.seen for s, c in stage.by_source.items()} == dict(sources)
    assert "download funnel" in downloaded.cli_output and "blocked_url" in downloaded.cli_output


@uses_download
def test_cards_read_the_download_first_and_once_and_filters_chain_on_it(downloaded):
    report = run_job(FilterJob(downloaded.pool, [{"kind": "caption_length", "min_words": 3}], "basic"))
    assert not report.failed
    stages = pool_stage_stats(Pool(downloaded.pool))  # what dataset cards show
    assert [s.stage for s in stages] == ["download", "caption_length"]
    assert stages[0].to_dict() == download_stats(downloaded.pool).to_dict()
    Funnel(stages).check()  # the filter saw exactly the downloaded images


@uses_download
def test_successes_are_the_downloadable_rows_with_uid_caption_and_source(downloaded):
    pool = Pool(downloaded.pool)
    samples = pa.concat_tables(pool.read_samples(s) for s in pool.shard_ids())
    served = {r["url"] for r in downloaded.rows if r["kind"] in ("img", "png")}
    assert set(samples["url"].to_pylist()) == served
    by_url = {r["url"]: r for r in downloaded.rows}
    for s in samples.to_pylist():
        row = by_url[s["url"]]
        assert s["caption"] == row["text"]
        assert s["source"] == row["source"]
        assert s["uid"] == (row["uid"].lower() if row["uid"] else compute_uid(row["url"], row["text"]))
        assert (s["original_width"], s["original_height"]) == (48, 32)
        assert s["kind"] == row["kind"]  # a carried crawl column


@uses_download
def test_tar_samples_carry_uid_caption_source_and_sha256_of_the_original_bytes(downloaded, server):
    pool = Pool(downloaded.pool)
    rows = {r["key"]: r for s in pool.shard_ids() for r in pool.read_rows(s).to_pylist()}
    n = 0
    for shard in pool.shard_ids():
        for sample in pool.iter_tar(shard):
            meta, row = sample.meta(), rows[sample.key]
            assert (meta["uid"], meta["source"], meta["caption"]) == (
                row["uid"],
                row["source"],
                row["caption"],
            )
            assert sample.files["txt"].decode() == row["caption"]
            original = server.files[row["url"].split(str(server.port), 1)[1]]
            # img2dataset hashes the bytes it downloaded, before any resize or re-encode
            assert row["sha256"] == meta["sha256"] == hashlib.sha256(original).hexdigest()
            if row["url"].endswith(".jpg"):  # a jpg needing no resize is stored byte for byte
                assert sample.files["jpg"] == original
            else:  # a png is re-encoded to jpg: the stored bytes differ from what was hashed
                assert hashlib.sha256(sample.files["jpg"]).hexdigest() != row["sha256"]
            n += 1
    assert n == EXPECTED["kept"]


@uses_download
def test_failures_keep_img2dataset_status_and_raw_message(downloaded):
    table = pa.concat_tables(
        pq.read_table(p) for p in sorted((downloaded.pool / "attributes" / "download").glob("*.parquet"))
    )
    assert table.num_rows == len(downloaded.rows)  # every crawl row has a verdict
    rows = table.to_pylist()
    by_reason: dict[str, list[dict]] = {}
    for r in rows:
        by_reason.setdefault(r["download_reason"] or "kept", []).append(r)
    assert by_reason["http_404"][0]["error_message"].startswith("HTTP Error 404")
    assert by_reason["http_5xx"][0]["error_message"].startswith("HTTP Error 500")
    assert "timed out" in by_reason["timeout"][0]["error_message"]
    assert by_reason["decode_error"][0]["error_message"].startswith("Image decoding error")
    assert by_reason["too_small"][0]["error_message"] == "image too small"
    assert {r["error_message"].split(":")[0] for r in by_reason["blocked_url"]} >= {
        "loopback address",
        "special-use host name",
        "cloud metadata address",
        "scheme 'ftp' is not http or https",
    }
    assert all(r["download_keep"] is (r["download_reason"] is None) for r in rows)


@uses_download
def test_blocked_and_invalid_urls_are_recorded_and_never_fetched(downloaded):
    assert not [p for p in downloaded.requests if p.startswith(("/blocked", "/invalid"))]
    rejected = pq.read_table(downloaded.pool / "_download" / "rejected" / "00000.parquet").to_pylist()
    assert Counter(r["reason"] for r in rejected) == Counter(
        {k: EXPECTED[k] for k in ("blocked_url", "invalid_url", "invalid_uid")}
    )
    assert all(r["caption"] and r["detail"] for r in rejected)
    pool_urls = {
        u
        for s in Pool(downloaded.pool).shard_ids()
        for u in Pool(downloaded.pool).read_rows(s)["url"].to_pylist()
    }
    assert not pool_urls & {r["url"] for r in rejected}


@uses_download
def test_rerun_downloads_nothing_and_reports_identical_stats(downloaded, server):
    before = {p.name: p.read_text() for p in stats_files(downloaded.pool)}
    tars = {p.name: p.stat().st_mtime_ns for p in downloaded.pool.glob("*.tar")}
    n_requests = len(server.requests)
    report = download_crawl(downloaded.crawl, downloaded.pool, _config())
    assert len(server.requests) == n_requests
    assert {o.status for o in report.outcomes} == {"skipped"}
    assert {p.name: p.read_text() for p in stats_files(downloaded.pool)} == before
    assert {p.name: p.stat().st_mtime_ns for p in downloaded.pool.glob("*.tar")} == tars


@uses_download
def test_a_lost_shard_is_downloaded_again_and_only_it(downloaded, server):
    pool, shard = downloaded.pool, "00001"
    shard_urls = set(pq.read_table(pool / f"{shard}.parquet")["url"].to_pylist())
    first = download_stats(pool)
    for path in [pool / f"{shard}.tar", pool / f"{shard}.parquet", pool / f"{shard}_stats.json"]:
        path.unlink()
    n_requests = len(server.requests)
    report = download_crawl(downloaded.crawl, pool, _config(**{"downloader.output": "terminal"}))
    refetched = {server.url(p) for p in server.requests[n_requests:]}
    assert refetched <= shard_urls and refetched  # img2dataset's incremental mode skips the others
    assert [o.shard for o in report.outcomes if o.status == "done"] == [f"download-{shard}"]
    again = download_stats(pool)
    assert again.total.to_dict() == first.total.to_dict()
    assert {k: c.to_dict() for k, c in again.by_source.items()} == {
        k: c.to_dict() for k, c in first.by_source.items()
    }


def test_shards_img2dataset_did_not_finish_fail_the_command_and_are_retried(tmp_path, monkeypatch):
    rows = [{"url": f"http://127.0.0.1:1/{i}.jpg", "text": f"caption {i}", "kind": "img"} for i in range(25)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "crawl.parquet")
    calls: list[dict] = []
    monkeypatch.setattr(
        run_module, "run_img2dataset", lambda args, pending, log_file, settings=None: calls.append(pending)
    )
    report = download_crawl(tmp_path / "crawl.parquet", tmp_path / "pool", _config())
    assert calls == [{"00000": 10, "00001": 10, "00002": 5}]  # img2dataset "gave up" on every shard
    assert [o.shard for o in report.failed] == ["download-00000", "download-00001", "download-00002"]
    assert "did not finish shard 00000" in report.failed[0].error and not stats_files(tmp_path / "pool")
    result = CliRunner().invoke(
        app, ["download", str(tmp_path / "crawl.parquet"), "--out", str(tmp_path / "pool"), *_set_args()]
    )
    assert result.exit_code == 1 and "Rerun the same command" in " ".join(result.output.split())
    assert len(calls) == 2 and calls[1] == calls[0]  # the rerun asks img2dataset for the same shards


def test_a_url_img2dataset_wrote_no_row_for_is_counted_as_not_recorded(tmp_path, monkeypatch):
    rows = [{"url": f"http://127.0.0.1:1/{i}.jpg", "text": f"caption {i}", "kind": "img"} for i in range(15)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "crawl.parquet")

    def img2dataset_that_drops_row_3(
        args: dict, pending: dict[str, int], log_file: Path | None, settings: object = None
    ) -> None:
        # what img2dataset leaves when a sample crashes in its writer loop: no row, shard complete
        for shard in pending:
            sent = (
                pq.ParquetFile(Path(args["url_list"]) / "00000.parquet")
                .read_row_group(int(shard))
                .to_pylist()
            )
            out = [
                {**r, "key": f"{int(shard) * 10 + i:06d}", "status": "success", "error_message": None}
                for i, r in enumerate(sent)
                if i != 3
            ]
            pq.write_table(pa.Table.from_pylist(out), Path(args["output_folder"]) / f"{shard}.parquet")
            (Path(args["output_folder"]) / f"{shard}_stats.json").write_text(json.dumps({"duration": 0.5}))

    monkeypatch.setattr(run_module, "run_img2dataset", img2dataset_that_drops_row_3)
    report = download_crawl(tmp_path / "crawl.parquet", tmp_path / "pool", _config())
    (stage,) = report.stats
    assert (stage.total.seen, stage.total.kept, dict(stage.total.dropped)) == (15, 13, {"not_recorded": 2})
    lost = [
        r for r in Pool(tmp_path / "pool").read_attributes("download").to_pylist() if not r["download_keep"]
    ]
    assert {r["url"] for r in lost} == {rows[3]["url"], rows[13]["url"]}  # row 3 of each shard
    text = {r["url"]: r["text"] for r in rows}
    assert all(r["uid"] == compute_uid(r["url"], text[r["url"]]) for r in lost)
    assert {r["error_message"] for r in lost} == {"img2dataset wrote no row for this url"}


def test_img2dataset_gets_every_setting_by_its_own_name():
    download = img2dataset_download()
    cfg = _config(**{"columns.bbox": "face_bboxes", "image.skip_reencode": "false"})
    args = img2dataset_arguments(Path("in"), Path("pool"), cfg)
    assert set(args) <= set(inspect.signature(download).parameters)
    assert args["output_format"] == "webdataset" and args["incremental_mode"] == "incremental"
    assert args["compute_hash"] == "sha256" and args["enable_wandb"] is False
    assert args["save_additional_columns"] == ["uid", "source", "kind"] and args["bbox_col"] == "face_bboxes"
    assert (args["number_sample_per_shard"], args["timeout"], args["min_image_size"]) == (10, TIMEOUT_S, 8)


def test_blurring_with_skip_reencode_is_refused():
    # img2dataset would store the original bytes of a jpg needing no resize: unblurred
    with pytest.raises(ConfigError, match="skip_reencode=false"):
        _config(**{"columns.bbox": "face_bboxes"})


@uses_download
def test_a_rerun_with_other_settings_is_refused(downloaded):
    with pytest.raises(PlanMismatch, match=r"image\.image_size"):
        download_crawl(downloaded.crawl, downloaded.pool, _config(**{"image.image_size": 64}))


@pytest.mark.parametrize(
    ("drop", "message"),
    [("url", "no url column 'url'"), ("text", "no caption column 'caption' or 'text'")],
)
def test_a_crawl_missing_a_required_column_is_a_clear_error(tmp_path, drop, message):
    table = pa.table({"url": ["http://example.com/a.jpg"], "text": ["a cat"]}).drop_columns([drop])
    pq.write_table(table, tmp_path / "crawl.parquet")
    with pytest.raises(CrawlError, match=message):
        download_crawl(tmp_path / "crawl.parquet", tmp_path / "pool", _config())
    result = CliRunner().invoke(
        app, ["download", str(tmp_path / "crawl.parquet"), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_a_configured_caption_column_must_exist(tmp_path):
    pq.write_table(pa.table({"url": ["http://example.com/a.jpg"], "text": ["a cat"]}), tmp_path / "c.parquet")
    with pytest.raises(CrawlError, match="no caption column 'alt'"):
        download_crawl(tmp_path / "c.parquet", tmp_path / "pool", _config(**{"columns.caption": "alt"}))


# --------------------------------------------------------------------------------------------
# The synthetic crawl (curation.synth) served on 127.0.0.1

SYNTH_REASONS = {"http_500": "http_5xx"}  # ground truth's expected_error -> our reason, if it differs


@pytest.mark.slow
def test_the_synthetic_crawl_downloads_exactly_its_downloadable_pairs(tmp_path):
    from curation.synth import SynthConfig, generate, rebase_urls, serve

    sets = ["n_pairs=3000", "workers=2", "suite.per_class=1", "suite.retrieval_pairs=1", "seed_set.n=1",
            "imagenet.per_class=1"]  # fmt: skip
    generate(load_config(SynthConfig, CONF_DIR / "synth" / "default.yaml", sets), tmp_path / "synth")
    truth = pq.read_table(tmp_path / "synth" / "ground_truth.parquet").to_pylist()
    with serve(tmp_path / "synth") as server:
        crawl = rebase_urls(pq.read_table(tmp_path / "synth" / "crawl.parquet"), server.base_url)
        pq.write_table(crawl, tmp_path / "crawl.parquet")
        # one worker process: on 2 cores start-up (torch imports), not fetching, is the cost
        one_process = ["downloader.processes_count=1", "downloader.thread_count=32"]
        cfg = load_config(DownloadConfig, CONF_DIR / "download" / "synthetic.yaml", one_process)
        report = download_crawl(tmp_path / "crawl.parquet", tmp_path / "pool", cfg)
    assert not report.failed
    (stage,) = report.stats
    downloadable = [t for t in truth if t["downloadable"]]
    assert stage.total.seen == len(truth) == 3000
    assert stage.total.kept == len(downloadable)
    for source, counts in stage.by_source.items():
        assert counts.kept == sum(t["source"] == source for t in downloadable), source
    verdicts = Pool(tmp_path / "pool").read_attributes("download").to_pylist()
    assert len(verdicts) == len(truth)
    got = {v["uid"]: v["download_reason"] for v in verdicts}
    expected = {t["uid"]: SYNTH_REASONS.get(t["expected_error"], t["expected_error"]) for t in truth}
    assert got == expected  # uid by uid: downloaded, or dropped for the planted reason
