"""A small crawl over several hosts that tests a polite crawler: robots.txt, opt-out headers, retries.

Five hosts on 127.0.0.1 (distinct ports, one web root), each with its own robots.txt:

- ``open``: allows everything; serves opt-out images (``X-Robots-Tag: noai``), images that opt
  out of another bot only, images that answer 503 once and then 200, and images that answer 429
  with ``Retry-After`` for a while;
- ``private``: its ``*`` group disallows everything, but a group for our product token disallows
  only ``/private/`` and allows ``/private/public-*`` (group choice, longest match, wildcards);
- ``closed``: ``Disallow: /`` for everyone;
- ``missing``: robots.txt answers 404 (RFC 9309: everything may be fetched);
- ``broken``: robots.txt answers 500 (RFC 9309: nothing may be fetched).

:func:`polite_web` writes the web root and faults, starts the hosts and writes ``crawl.parquet``
with each row's expected first verdict (``expected``) and its verdict after a retry pass
(``expected_final``); every server's :attr:`~curation.synth.server.SynthServer.requests` says which
paths were asked for.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.core.io import atomic_write_json
from curation.synth.server import SynthServer, serve_hosts

AGENT = "curation-bot"
RETRY_AFTER_S = 2.0
ROBOTS: dict[str, str | int] = {
    "open": "User-agent: *\nAllow: /\n",
    "private": (
        "User-agent: *\nDisallow: /\n\n"
        f"User-agent: {AGENT}\nDisallow: /private/\nAllow: /private/public-*.jpg$\nCrawl-delay: 0.5\n"
    ),
    "closed": "User-agent: *\nDisallow: /\n",
    "missing": 404,
    "broken": 500,
}
# (host, path prefix, count, expected reason of the first pass, after a retry pass); None: downloaded
CASES: list[tuple[str, str, int, str | None, str | None]] = [
    ("open", "img", 12, None, None),
    ("open", "private", 2, None, None),  # /private/ is disallowed only on the private host
    ("open", "tagged", 4, "opted_out", "opted_out"),
    ("open", "tagged_other", 2, None, None),  # X-Robots-Tag for another bot only
    ("open", "flaky", 10, "http_5xx", None),
    ("open", "limited", 10, "rate_limited", None),
    ("private", "img", 4, None, None),
    ("private", "private", 6, "robots_disallowed", "robots_disallowed"),
    ("private", "private/public-", 3, None, None),
    ("closed", "img", 5, "robots_disallowed", "robots_disallowed"),
    ("missing", "img", 6, None, None),
    ("broken", "img", 5, "robots_unavailable", "robots_unavailable"),
]


@dataclass
class PoliteWeb:
    crawl: Path
    hosts: dict[str, SynthServer]

    def image_requests(self, host: str) -> dict[str, int]:
        """Requests to ``host`` by path, robots.txt left out."""
        return {p: n for p, n in self.hosts[host].requests.items() if p != "/robots.txt"}


def _path(prefix: str, i: int) -> str:
    return f"/{prefix}{i}.jpg" if prefix.endswith("-") else f"/{prefix}/{i}.jpg"


def write_web(root: Path) -> None:
    """Every image any host serves, and the faults table, under ``root``."""
    faults: dict[str, dict] = {}
    for _, prefix, count, _, _ in CASES:
        for i in range(count):
            path = _path(prefix, i)
            file = root / "web" / path.lstrip("/")
            file.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.new("RGB", (64, 48), (i * 40 % 256, len(prefix) * 20 % 256, 90)).save(buf, "JPEG")
            file.write_bytes(buf.getvalue())
            if prefix == "tagged":
                faults[path] = {"kind": "x_robots_tag", "value": "noai"}
            elif prefix == "tagged_other":
                faults[path] = {"kind": "x_robots_tag", "value": "otherbot: noai, noimageai"}
            elif prefix == "flaky":
                faults[path] = {"kind": "transient", "status": 503, "times": 1}
            elif prefix == "limited":
                faults[path] = {"kind": "rate_limited", "retry_after_s": RETRY_AFTER_S}
    atomic_write_json(root / "faults.json", faults)


@contextlib.contextmanager
def polite_web(root: Path) -> Iterator[PoliteWeb]:
    """Write the web, start the five hosts, write ``root/crawl.parquet``; stop the hosts on exit."""
    write_web(root)
    hosts = serve_hosts(root, ROBOTS)
    try:
        rows = []
        for host, prefix, count, expected, final in CASES:
            for i in range(count):
                url = hosts[host].url(_path(prefix, i))
                rows.append({"url": url, "text": f"a photo of {prefix} {i} on {host}", "source": host,
                             "expected": expected, "expected_final": final})  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), root / "crawl.parquet")
        yield PoliteWeb(root / "crawl.parquet", hosts)
    finally:
        for server in hosts.values():
            server.close()
