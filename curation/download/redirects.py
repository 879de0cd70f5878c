"""Fetching one url the way img2dataset does, but with every redirect hop checked and the body capped.

img2dataset's ``download_image`` calls ``urllib.request.urlopen``, which follows up to 10 redirects
to any host: a url on an allowed host answering ``302 Location: http://169.254.169.254/...`` would
walk around the url policy. :func:`fetch_image` has the same signature and results, but opens the
url with a redirect handler that puts each ``Location`` through :class:`UrlPolicy` *before* it is
requested; a refused hop ends the fetch with ``blocked redirect: FROM -> TO (why)``, so the blocked
host receives nothing. The body is read up to ``max_body_bytes`` (a larger one is refused as
``body_too_large``), and the url the image finally came from is recorded for the pool's metadata.
"""

from __future__ import annotations

import io
import threading
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from typing import IO, Any

from curation.download.urlpolicy import UrlPolicy

BLOCKED_REDIRECT = "blocked_redirect"
BODY_TOO_LARGE = "body_too_large"
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"  # img2dataset's


class BlockedRedirect(urllib.request.URLError):
    """A redirect whose target the url policy refuses; raised before the target is contacted."""

    def __init__(self, source: str, target: str, detail: str) -> None:
        super().__init__(f"blocked redirect: {source} -> {target} ({detail})")
        self.message = f"blocked redirect: {source} -> {target} ({detail})"

    def __str__(self) -> str:
        return self.message


class PolicyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only when the url policy allows its target."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        verdict = self.policy.check(newurl)
        if verdict is not None:
            fp.close()
            raise BlockedRedirect(req.full_url, newurl, verdict[1])
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class FetchGuard:
    """The settings of a guarded fetch, and the final url of each sample fetched by this process."""

    allow_hosts: tuple[str, ...]
    max_body_bytes: int
    final_urls: dict[int, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"allow_hosts": self.allow_hosts, "max_body_bytes": self.max_body_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(PolicyRedirectHandler(UrlPolicy(self.allow_hosts)))

    def record(self, key: int, url: str) -> None:
        with self._lock:
            self.final_urls[key] = url


def fetch_image(
    row: tuple[int, str],
    timeout: float,
    user_agent_token: str | None,
    disallowed_header_directives: set[str] | None,
    *,
    guard: FetchGuard,
) -> tuple[int, io.BytesIO | None, str | None]:
    """``img2dataset.downloader.download_image`` with policy-checked redirects and a body cap."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    agent = USER_AGENT
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        with guard.opener().open(request, timeout=timeout) as r:
            if disallowed_header_directives and is_disallowed(
                r.headers, user_agent_token, disallowed_header_directives
            ):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            body = _read_capped(r, guard.max_body_bytes)
            if body is None:
                return key, None, f"{BODY_TOO_LARGE}: over limits.max_body_bytes={guard.max_body_bytes:,}"
            guard.record(key, r.geturl())
        return key, io.BytesIO(body), None
    except Exception as err:  # img2dataset's contract: every failure is a message
        return key, None, str(err)


def _read_capped(response: Any, cap: int) -> bytes | None:
    """The body, or None when it is larger than ``cap`` (told by Content-Length or by reading)."""
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        if int(length) > cap:
            return None
        return response.read()  # a short body raises IncompleteRead, counted as truncated
    body = response.read(cap + 1)
    return None if len(body) > cap else body
