"""Polite and incremental crawling: robots.txt before fetch, opt-out headers, retry passes, appends.

The crawl is :mod:`curation.synth.politeness`: five hosts on 127.0.0.1 with different robots.txt
answers and transient faults; each server logs every request by path.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation.core.config import load_config
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.download import DownloadConfig, download_crawl, download_stats, retry_failed
from curation.download.config import RobotsConfig
from curation.download.robots import ROBOTS_DISALLOWED, RobotsCache, fetch_robots, user_agent_string
from curation.download.urlpolicy import UrlPolicy
from curation.synth.politeness import AGENT, CASES, polite_web

CONTACT = "http://127.0.0.1/curation-bot.html"
SETTINGS = [
    "number_sample_per_shard=10",
    "url_policy.allow_hosts=[127.0.0.1]",
    "downloader.processes_count=1",
    "downloader.thread_count=8",
    "downloader.timeout=3",
    f"downloader.contact_url={CONTACT}",
    "retry.retry_after_s=2",
    "columns.carry=[expected, expected_final]",
]


def _config(*extra: str) -> DownloadConfig:
    return load_config(DownloadConfig, None, [*SETTINGS, *extra])


def _verdicts(pool: Path) -> dict[str, tuple[str | None, str | None]]:
    """uid -> (reason, url) over the whole ledger; fails if a uid has two verdicts."""
    table = Pool(pool).read_attributes("download").to_pylist()
    counts = Counter(r["uid"] for r in table)
    assert max(counts.values()) == 1, [u for u, n in counts.items() if n > 1][:3]
    return {r["uid"]: (r["download_reason"], r["url"]) for r in table}


@dataclass
class Crawled:
    root: Path
    pool: Path
    crawl: pa.Table
    first: dict  # uid -> (reason, url) after the download
    first_requests: dict[str, Counter]
    retried: dict
    retry_requests: dict[str, Counter]
    second_requests: dict[str, Counter]
    second: dict
    stats: list
    shards_after_retry: list[str]
    shards_after_second: list[str]


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Crawled:
    root = tmp_path_factory.mktemp("polite")
    pool = root / "pool"
    cfg = _config()
    with polite_web(root / "web") as web:
        report = download_crawl(web.crawl, pool, cfg)
        assert not report.failed
        first = _verdicts(pool)
        first_requests = {h: s.requests for h, s in web.hosts.items()}
        report = retry_failed(pool, cfg)
        assert not report.failed
        retried = _verdicts(pool)
        retry_requests = {h: s.requests for h, s in web.hosts.items()}
        shards_after_retry = Pool(pool).shard_ids()
        stats = download_stats(pool)
        retry_failed(pool, cfg)  # nothing retriable is left
        second_requests = {h: s.requests for h, s in web.hosts.items()}
        second = _verdicts(pool)
        crawl = pq.read_table(web.crawl)
    return Crawled(root, pool, crawl, first, first_requests, retried, retry_requests, second_requests,
                   second, [stats], shards_after_retry, Pool(pool).shard_ids())  # fmt: skip


def _expected(crawled: Crawled, column: str) -> dict[str, str | None]:
    """url -> the crawl's expected reason in ``column``."""
    return dict(zip(crawled.crawl["url"].to_pylist(), crawled.crawl[column].to_pylist(), strict=True))


def _host_paths(crawled: Crawled, host: str) -> list[str]:
    rows = zip(crawled.crawl["url"].to_pylist(), crawled.crawl["source"].to_pylist(), strict=True)
    return [u.split("/", 3)[3] for u, s in rows if s == host]


@pytest.mark.slow
def test_every_row_gets_the_expected_first_verdict(crawled):
    expected = _expected(crawled, "expected")
    got = {url: reason for reason, url in crawled.first.values()}
    assert got == expected


@pytest.mark.slow
def test_robots_disallowed_paths_are_never_requested_and_recorded_with_their_rule(crawled):
    table = Pool(crawled.pool).read_attributes("download").to_pylist()
    disallowed = [r for r in table if r["download_reason"] == ROBOTS_DISALLOWED]
    assert len(disallowed) == sum(n for _, _, n, e, _ in CASES if e == ROBOTS_DISALLOWED)
    for host in ("private", "closed"):
        requested = crawled.second_requests[host]
        paths = {"/" + r["url"].split("/", 3)[3] for r in disallowed if r["source"] == host}
        assert paths and all(requested[p] == 0 for p in paths), (host, requested)
    closed = next(r for r in disallowed if r["source"] == "closed")
    assert "user-agent *: Disallow: /" in closed["error_message"]
    private = next(r for r in disallowed if r["source"] == "private")
    assert f"user-agent {AGENT}: Disallow: /private/" in private["error_message"]


@pytest.mark.slow
def test_a_404_robots_host_is_fully_crawled_and_a_500_host_not_at_all(crawled):
    missing = crawled.second_requests["missing"]
    assert all(missing["/" + p] == 1 for p in _host_paths(crawled, "missing"))
    assert set(crawled.second_requests["broken"]) == {"/robots.txt"}
    assert crawled.second_requests["broken"]["/robots.txt"] == 1  # cached for the job, retries included


@pytest.mark.slow
def test_every_request_carries_the_user_agent_with_the_contact_url(crawled):
    # the robots fetcher sends img2dataset's exact header; its token holds the contact url
    assert user_agent_string(_config().downloader.agent_token()).endswith(
        f"(compatible; {AGENT}; +{CONTACT}; +https://github.com/rom1504/img2dataset)"
    )


@pytest.mark.slow
def test_a_retry_pass_recovers_the_transient_failures_and_the_funnel_balances(crawled):
    transient = {u for u, (reason, _) in crawled.first.items() if reason in ("http_5xx", "rate_limited")}
    assert len(transient) == 20
    recovered = [u for u in transient if crawled.retried[u][0] is None]
    assert len(recovered) / len(transient) >= 0.95
    expected_final = _expected(crawled, "expected_final")
    assert {url: reason for reason, url in crawled.retried.values()} == expected_final
    (stage,) = crawled.stats
    Funnel([stage]).check()
    assert stage.total.seen == crawled.crawl.num_rows
    assert stage.total.kept == sum(v is None for v in expected_final.values())
    # each transient path was asked twice (the failure, the retry), the others once
    for host, requested in crawled.retry_requests.items():
        for path, n in requested.items():
            want = 2 if path.startswith(("/flaky/", "/limited/")) else 1
            assert n == want, (host, path, n)


@pytest.mark.slow
def test_a_second_retry_pass_with_nothing_retriable_does_nothing(crawled):
    assert crawled.second == crawled.retried
    assert crawled.second_requests == crawled.retry_requests
    assert crawled.shards_after_second == crawled.shards_after_retry


# Fast tests of the robots.txt fetcher against small servers


def _robots_server(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            code, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v.replace("PORT", str(self.server.server_address[1])))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.mark.parametrize(
    ("routes", "kind"),
    [
        ({"/robots.txt": (200, {}, b"User-agent: *\nDisallow: /x\n")}, "rules"),
        ({"/robots.txt": (403, {}, b"")}, "allow_all"),
        ({"/robots.txt": (429, {"Retry-After": "5"}, b"")}, "unreachable"),
        ({"/robots.txt": (503, {}, b"")}, "unreachable"),
        # a redirect within the limit is followed to its rules
        (
            {"/robots.txt": (301, {"Location": "/r.txt"}, b""), "/r.txt": (200, {}, b"User-agent: *\n")},
            "rules",
        ),
        # a loop: past max_redirects the file is unavailable (RFC 9309: allow)
        ({"/robots.txt": (302, {"Location": "/robots.txt"}, b"")}, "allow_all"),
        # a hop to an address the url policy blocks is not followed
        ({"/robots.txt": (302, {"Location": "http://10.0.0.1/robots.txt"}, b"")}, "unreachable"),
    ],
)
def test_robots_answers_follow_rfc_9309(routes, kind):
    httpd, origin = _robots_server(routes)
    try:
        answer = fetch_robots(origin, RobotsConfig(timeout=5), UrlPolicy(["127.0.0.1"]), "ua")
    finally:
        httpd.shutdown()
    assert answer.kind == kind, answer


def test_an_unreachable_host_is_disallowed_unless_configured_otherwise(tmp_path):
    urls = pa.array(["http://127.0.0.1:1/a.jpg"])  # nothing listens on port 1
    for on_unavailable, reason in (("disallow", "robots_unavailable"), ("allow", None)):
        cfg = RobotsConfig(on_unavailable=on_unavailable, timeout=2)
        cache = RobotsCache(tmp_path / f"{on_unavailable}.json", cfg, UrlPolicy(["127.0.0.1"]), AGENT, AGENT)
        reasons, _ = cache.classify(urls)
        assert reasons.to_pylist() == [reason]


def test_cached_answers_are_reused_until_they_are_older_than_max_age(tmp_path):
    hits = Counter()
    httpd, origin = _robots_server({"/robots.txt": (200, {}, b"User-agent: *\nDisallow: /no\n")})
    handler = httpd.RequestHandlerClass
    get = handler.do_GET

    def counting(self):  # type: ignore[no-untyped-def]
        hits[self.path] += 1
        get(self)

    handler.do_GET = counting
    try:
        urls = pa.array([f"{origin}/no/1.jpg", f"{origin}/yes/2.jpg"])
        path = tmp_path / "robots.json"
        for _ in range(2):  # a second job reads the cache file
            cache = RobotsCache(path, RobotsConfig(max_age_s=60), UrlPolicy(["127.0.0.1"]), AGENT, AGENT)
            reasons, _ = cache.classify(urls)
            assert reasons.to_pylist() == [ROBOTS_DISALLOWED, None]
        assert hits["/robots.txt"] == 1
        time.sleep(1.1)
        cache = RobotsCache(path, RobotsConfig(max_age_s=1), UrlPolicy(["127.0.0.1"]), AGENT, AGENT)
        cache.classify(urls)
        assert hits["/robots.txt"] == 2
    finally:
        httpd.shutdown()


@pytest.mark.slow
def test_an_appended_slice_selects_byte_for_byte_what_a_fresh_run_over_the_union_selects(tmp_path):
    from bench.incremental import SUBSETS, run

    result = run(tmp_path, pairs=400, fraction=0.1)
    assert result["identical"] == {name: True for name in SUBSETS}
    assert all(result["sizes"].values())
    append = result["append"]
    assert append["score shards run"] == append["copydesc shards run"] == 1  # only the new shard
    assert result["fresh"]["score shards run"] == result["shards"] - 1  # the union fits one shard fewer
    # the slice's rows already in the pool were not fetched again: one verdict per uid, the union's
    appended = Pool(tmp_path / "appended").read_attributes("download", ["uid", "download_reason"])
    fresh = Pool(tmp_path / "fresh").read_attributes("download", ["uid", "download_reason"])
    assert appended.num_rows == fresh.num_rows == len(set(fresh["uid"].to_pylist()))
    assert sorted(appended.to_pylist(), key=str) == sorted(fresh.to_pylist(), key=str)
    assert result["skipped"] > 0


def _metadata_shard(pool: Path, shard: str, rows: list[tuple[str, str]]) -> None:
    """A pool shard of downloaded rows (uid, sha256): enough for exact dedup, which reads no images."""
    table = [{"uid": uid, "url": f"http://example.com/{uid}.jpg", "caption": "a photo of a cat",
              "status": "success", "sha256": sha} for uid, sha in rows]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(table), pool / f"{shard}.parquet")


def _uid(n: int) -> str:
    return f"{n:032x}"


GROWN_SPECS = [
    {"kind": "caption_length", "min_words": 2},
    {"kind": "exact_dup"},
    {"kind": "caption_length", "name": "words3", "min_words": 3},
]


def _grown_and_fresh(tmp_path: Path) -> tuple[Path, Path]:
    """Two pools of the same three shards: ``grown`` filtered before its third shard arrived."""
    from curation.engines import run_job
    from curation.filtering.job import FilterJob

    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    for pool in (grown, fresh):
        pool.mkdir()
        _metadata_shard(pool, "00000", [(_uid(10), "h1"), (_uid(11), "h2")])
        _metadata_shard(pool, "00001", [(_uid(20), "h3"), (_uid(21), "h4")])
    run_job(FilterJob(grown, GROWN_SPECS, "dedup"))
    # the appended shard duplicates uid 10's image under a smaller uid: uid 10 is now the duplicate
    for pool in (grown, fresh):
        _metadata_shard(pool, "00002", [(_uid(5), "h1"), (_uid(30), "h5")])
    return grown, fresh


def _spy_on_caption_filters(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The uids every ``caption_length`` filter is run on from now on (the per-shard filters here)."""
    from filters.caption import CaptionLengthFilter

    seen: list[str] = []
    verdict = CaptionLengthFilter.verdict

    def spy(self: CaptionLengthFilter, batch: pa.RecordBatch) -> object:
        seen.extend(batch["uid"].to_pylist())
        return verdict(self, batch)

    monkeypatch.setattr(CaptionLengthFilter, "verdict", spy)
    return seen


def _same_outputs(a: Path, b: Path) -> None:
    """Verdict tables and funnel stats byte for byte (the stats without timings)."""
    out_a, out_b = Pool(a).attributes_dir("dedup"), Pool(b).attributes_dir("dedup")
    for shard in ("00000", "00001", "00002"):
        assert (out_a / f"{shard}.parquet").read_bytes() == (out_b / f"{shard}.parquet").read_bytes()
        stats = f"_stats/{shard}.json"
        assert (out_a / stats).read_text() == (out_b / stats).read_text()


def test_a_grown_pool_refreshes_only_the_global_verdicts_of_shards_whose_dedup_decision_changed(
    tmp_path, monkeypatch
):
    from curation.engines import run_job
    from curation.filtering.job import FilterJob

    grown, fresh = _grown_and_fresh(tmp_path)
    seen = _spy_on_caption_filters(monkeypatch)  # uids the per-shard filters were run on
    report = run_job(FilterJob(grown, GROWN_SPECS, "dedup"))
    assert {o.shard: o.status for o in report.outcomes} == {
        "00000": "done",  # its exact-dup lookup changed: refreshed
        "00001": "skipped",
        "00002": "done",
    }
    assert sorted(set(seen)) == [_uid(5), _uid(30)]  # only the new shard met the per-shard filters
    run_job(FilterJob(fresh, GROWN_SPECS, "dedup"))
    _same_outputs(grown, fresh)
    a = Pool(grown).read_attributes("dedup").sort_by("uid")
    dropped = a.filter(pc.equal(a["exact_dup_keep"], False))["uid"].to_pylist()
    assert dropped == [_uid(10)]
    run_job(FilterJob(grown, GROWN_SPECS, "dedup"))  # a rerun: nothing to do, the refresh record goes
    assert not list((Pool(grown).attributes_dir("dedup") / "_refresh").glob("*.json"))


def test_a_refresh_killed_after_phase_1_is_still_a_refresh_when_resumed(tmp_path, monkeypatch):
    from curation.engines import run_job
    from curation.filtering.job import FilterJob

    grown, fresh = _grown_and_fresh(tmp_path)

    def killed(self: FilterJob, shard: str, staging: Path) -> None:
        raise KeyError(shard)

    monkeypatch.setattr(FilterJob, "run_shard", killed)
    report = run_job(FilterJob(grown, GROWN_SPECS, "dedup"), retries=0)  # phase 1 published, no shard ran
    assert {o.shard for o in report.failed} == {"00000", "00002"}
    monkeypatch.undo()
    seen = _spy_on_caption_filters(monkeypatch)
    run_job(FilterJob(grown, GROWN_SPECS, "dedup"))
    assert sorted(set(seen)) == [_uid(5), _uid(30)]
    run_job(FilterJob(fresh, GROWN_SPECS, "dedup"))
    _same_outputs(grown, fresh)


def test_a_refresh_record_without_a_usable_table_filters_the_shard_in_full(tmp_path):
    from curation.engines import run_job
    from curation.filtering.job import FilterJob

    grown, fresh = _grown_and_fresh(tmp_path)
    out = Pool(grown).attributes_dir("dedup")
    table = pq.read_table(out / "00000.parquet")
    pq.write_table(table.drop_columns(["words3_keep"]), out / "00000.parquet")  # written by other filters
    run_job(FilterJob(grown, GROWN_SPECS, "dedup"))
    run_job(FilterJob(fresh, GROWN_SPECS, "dedup"))
    _same_outputs(grown, fresh)


def test_the_cli_checks_how_retry_and_append_are_asked_for(tmp_path):
    from typer.testing import CliRunner

    from pipelines.app import app

    crawl = tmp_path / "crawl.parquet"
    pq.write_table(pa.table({"url": ["http://example.com/a.jpg"], "text": ["a cat"]}), crawl)
    both = CliRunner().invoke(app, ["download", str(crawl), "--retry-failed", str(tmp_path)])
    assert both.exit_code == 2 and "takes no URLS" in both.output
    no_plan = CliRunner().invoke(app, ["download", "--retry-failed", str(tmp_path)])
    assert no_plan.exit_code == 2 and "has no download plan" in no_plan.output
    append = CliRunner().invoke(app, ["download", str(crawl), "--out", str(tmp_path / "new"), "--append"])
    assert append.exit_code == 2 and "no download plan to append to" in append.output
