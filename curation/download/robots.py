"""robots.txt before fetch (RFC 9309): one request per origin (scheme + host + port), cached per pool.

Parsed with `protego <https://github.com/scrapy/protego>`_ (Scrapy's parser): it implements RFC 9309's
matching (longest match wins, ``allow`` wins a tie, ``*`` and ``$`` wildcards, percent-encoding
normalised), which ``urllib.robotparser`` does not (it applies the first matching line and knows no
wildcards, so it disagrees with Google's and Bing's reading of the same file).

What an answer means, per RFC 9309 section 2.3.1:

- 2xx: the file's rules for our product token (or the ``*`` group) decide each url;
- 4xx (but 429): "unavailable", every url may be fetched;
- 5xx, 429 (as Google treats it), a network error or a timeout: "unreachable", no url of the host
  is fetched (``robots.on_unavailable: allow`` changes that);
- redirects are followed up to ``robots.max_redirects`` hops, each hop through the url policy; more
  hops count as unavailable (allow, as the RFC permits), a hop the policy blocks as unreachable.

Urls are dropped as ``robots_disallowed`` (detail: the origin, the group and the rule that matched)
or ``robots_unavailable`` (detail: the status or error). Answers are kept in
``POOL/_download/robots.json`` with the time they were fetched and reused for ``robots.max_age_s``
(24 h by default, the RFC's upper bound for caching), so a resumed or retried download asks again
only for stale entries. ``Crawl-delay`` is read and recorded per origin but not enforced:
img2dataset has no per-host pacing (docs/download.md says what that means for site owners).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from protego import Protego

from curation.core import storage
from curation.core.io import atomic_write_json, read_json
from curation.download.config import RobotsConfig
from curation.download.urlpolicy import UrlPolicy

log = logging.getLogger(__name__)

ROBOTS_DISALLOWED = "robots_disallowed"
ROBOTS_UNAVAILABLE = "robots_unavailable"
# The User-Agent img2dataset sends (img2dataset/downloader.py); robots.txt requests send the same.
IMG2DATASET_UA = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
IMG2DATASET_REPO = "https://github.com/rom1504/img2dataset"
_ORIGIN = r"^(?P<origin>[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)"
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def user_agent_string(agent_token: str) -> str:
    """The exact User-Agent header img2dataset sends for ``user_agent_token=agent_token``."""
    return f"{IMG2DATASET_UA} (compatible; {agent_token.strip().lower()}; +{IMG2DATASET_REPO})"


@dataclass
class RobotsAnswer:
    """What one origin's ``/robots.txt`` request gave."""

    origin: str
    fetched_at: float
    status: int | None  # final HTTP status; None: no HTTP answer (network error, timeout, blocked hop)
    body: str = ""
    error: str | None = None

    @property
    def kind(self) -> str:
        """``rules`` (2xx), ``allow_all`` (4xx but 429, too many redirects) or ``unreachable``."""
        if self.status is not None and 200 <= self.status < 300:
            return "rules"
        if self.status is not None and 400 <= self.status < 500 and self.status != 429:
            return "allow_all"
        if self.error == "too many redirects":
            return "allow_all"
        return "unreachable"

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else (self.error or "no answer")
        return f"robots.txt of {self.origin}: {what}"


class _PolicyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most ``limit`` hops, each to a url the url policy allows."""

    def __init__(self, policy: UrlPolicy, limit: int) -> None:
        self.policy = policy
        self.max_redirections = limit  # urllib's own hop limit: HTTPError 'infinite loop' beyond it

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        verdict = self.policy.check(newurl)
        if verdict is not None:
            raise urllib.error.URLError(f"redirect to {newurl} refused by the url policy ({verdict[1]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_robots(origin: str, cfg: RobotsConfig, policy: UrlPolicy, user_agent: str) -> RobotsAnswer:
    """GET ``origin/robots.txt`` once, reading at most ``cfg.max_bytes``."""
    opener = urllib.request.build_opener(_PolicyRedirects(policy, cfg.max_redirects))
    request = urllib.request.Request(f"{origin}/robots.txt", headers={"User-Agent": user_agent})
    now = time.time()
    try:
        with opener.open(request, timeout=cfg.timeout) as response:
            body = response.read(cfg.max_bytes).decode("utf-8", errors="replace")
            return RobotsAnswer(origin, now, int(response.status), body)
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308):  # urllib gives up past max_redirections
            return RobotsAnswer(origin, now, None, error="too many redirects")
        return RobotsAnswer(origin, now, int(exc.code), error=str(exc.reason))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return RobotsAnswer(origin, now, None, error=f"{type(exc).__name__}: {reason}")


class RobotsCache:
    """robots.txt answers per origin, persisted in ``path``; decides urls for one product token."""

    def __init__(self, path: Path, cfg: RobotsConfig, policy: UrlPolicy, token: str, agent_token: str):
        self.path = storage.location(path)
        self.cfg = cfg
        self.policy = policy
        self.token = token.lower()
        self.user_agent = user_agent_string(agent_token)
        raw = read_json(self.path) if self.path.exists() else {}
        self.answers: dict[str, RobotsAnswer] = {k: RobotsAnswer(**v) for k, v in raw.items()}
        self._parsers: dict[str, Protego] = {}

    def ensure(self, origins: Iterable[str], refresh: Iterable[str] = ()) -> None:
        """Fetch the answers that are missing, older than ``max_age_s`` or named in ``refresh``."""
        now = time.time()
        forced = set(refresh)
        todo = sorted(
            o for o in set(origins)
            if o not in self.answers or o in forced or now - self.answers[o].fetched_at > self.cfg.max_age_s
        )  # fmt: skip
        if not todo:
            return
        log.info("fetching robots.txt of %d hosts", len(todo))
        with ThreadPoolExecutor(min(self.cfg.threads, len(todo))) as pool:
            for answer in pool.map(lambda o: fetch_robots(o, self.cfg, self.policy, self.user_agent), todo):
                self.answers[answer.origin] = answer
                self._parsers.pop(answer.origin, None)
        atomic_write_json(self.path, {k: asdict(v) for k, v in sorted(self.answers.items())})
        self._log_crawl_delays(todo)

    def _parser(self, origin: str) -> Protego:
        if origin not in self._parsers:
            self._parsers[origin] = Protego.parse(self.answers[origin].body)
        return self._parsers[origin]

    def _log_crawl_delays(self, origins: list[str]) -> None:
        delays = {
            o: d for o in origins if self.answers[o].kind == "rules"
            and (d := self._parser(o).crawl_delay(self.token)) is not None
        }  # fmt: skip
        if delays:
            log.warning(
                "%d hosts ask for a Crawl-delay (up to %.1f s, e.g. %s); img2dataset does not pace per "
                "host, so keep their urls few per shard or lower downloader.thread_count",
                len(delays), max(delays.values()), next(iter(delays)),
            )  # fmt: skip

    def classify(
        self, urls: pa.Array | pa.ChunkedArray, refresh_unreachable: bool = False
    ) -> tuple[pa.Array, pa.Array]:
        """Reasons (null where allowed) and details for urls that passed the url policy."""
        urls = urls.combine_chunks() if isinstance(urls, pa.ChunkedArray) else urls
        origins = origin_of(urls)
        distinct = [o for o in pc.unique(origins).to_pylist() if o is not None]
        stale = [o for o in distinct if o in self.answers and self.answers[o].kind == "unreachable"]
        self.ensure(distinct, refresh=stale if refresh_unreachable else ())
        reasons = np.full(len(urls), None, dtype=object)
        details = np.full(len(urls), None, dtype=object)
        encoded = pc.dictionary_encode(origins)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        for code, origin in enumerate(encoded.dictionary.to_pylist()):
            rows = np.flatnonzero(codes == code)
            answer = self.answers[origin]
            kind = answer.kind
            if kind == "unreachable" and self.cfg.on_unavailable == "disallow":
                reasons[rows] = ROBOTS_UNAVAILABLE
                details[rows] = f"{answer.describe()}: no url of this host is fetched (RFC 9309)"
            elif kind == "rules":
                self._apply_rules(
                    origin, urls.take(pa.array(rows, pa.int64())).to_pylist(), rows, reasons, details
                )
        return pa.array(reasons, pa.string()), pa.array(details, pa.string())

    def _apply_rules(
        self, origin: str, urls: list[str], rows: np.ndarray, reasons: np.ndarray, details: np.ndarray
    ) -> None:
        parser = self._parser(origin)
        for i, url in zip(rows, urls, strict=True):
            if not parser.can_fetch(url, self.token):
                reasons[i] = ROBOTS_DISALLOWED
                details[i] = f"robots.txt of {origin}: {matched_rule(parser, url, self.token)}"


def origin_of(urls: pa.Array) -> pa.Array:
    """``scheme://host[:port]`` of each url, lower-cased, default ports dropped (null if none)."""
    found = pc.extract_regex(urls, _ORIGIN).field("origin")
    origins = pc.utf8_lower(found)
    for scheme, port in _DEFAULT_PORTS.items():
        origins = pc.replace_substring_regex(origins, rf"^({scheme}://[^/]*){port}$", r"\1")
    return origins


def matched_rule(parser: Protego, url: str, token: str) -> str:
    """The group and the rule of ``parser`` that disallow ``url``, as robots.txt writes them.

    protego answers only yes or no; the rule is found the way its ``can_fetch`` finds it (rules are
    kept longest first), through its internals, so a change there degrades the detail, not the verdict.
    """
    try:
        from protego._utils import _quote_path

        group = parser._get_matching_rule_set(token)
        path = _quote_path(url)
        for rule in group._rules:
            if rule.value.match(path):
                return f"user-agent {group.user_agent}: {rule.field.capitalize()}: {rule.value._pattern}"
    except (AttributeError, ImportError, TypeError):
        pass
    return "disallowed"
