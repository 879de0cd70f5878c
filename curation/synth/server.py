"""A local HTTP server for the synthetic crawl: serves ``ROOT/web`` and plays ``ROOT/faults.json``.

Standard library only (``ThreadingHTTPServer``), so img2dataset downloads from it exactly as from
the web. Faults per url path: ``dead_404`` and ``server_500`` answer with that status, ``slow``
answers after a delay, ``non_image`` serves its HTML file with an HTML content type, ``redirect``
answers 302 to the real file. Corrupt images need no entry: their bytes on disk are corrupt.
Politeness cases: ``x_robots_tag`` serves the file with that ``X-Robots-Tag`` header,
``transient`` answers ``status`` (503) to the first ``times`` requests of the path and then the
file, ``rate_limited`` answers 429 with ``Retry-After: retry_after_s`` until that many seconds
have passed since its first 429. ``robots`` overrides ``/robots.txt`` per server (a text, or a
status code to answer with), so several servers on one root are hosts with different policies
(:func:`serve_hosts`). Every request is counted by path in :attr:`SynthServer.requests`, so a
test can prove what was never fetched. It binds 127.0.0.1 and refuses other interfaces unless
asked explicitly.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    """Static files plus the faults table; no directory listings, no access log."""

    faults: Mapping[str, Mapping[str, Any]]
    _content_type: str | None = None
    _extra_headers: dict[str, str]
    _seen: int = 0

    def __init__(
        self, *args: Any, faults: Mapping[str, Mapping[str, Any]], state: _State, **kwargs: Any
    ) -> None:
        self.faults = faults
        self.state = state
        self._extra_headers = {}
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self._apply_fault():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._apply_fault():
            super().do_HEAD()

    def end_headers(self) -> None:
        for name, value in self._extra_headers.items():
            self.send_header(name, value)
        super().end_headers()

    def _apply_fault(self) -> bool:
        """Act on the path's fault; True if the file should then be served normally."""
        path = unquote(urlsplit(self.path).path)
        with self.state.lock:
            self.state.requests[path] += 1
            self._seen = self.state.requests[path]  # this request's number, for transient faults
        if path == "/robots.txt" and self.state.robots is not None:
            return self._robots()
        fault = self.faults.get(path)
        if fault is None:
            return True
        action = _ACTIONS.get(str(fault.get("kind")))
        if action is None:
            raise ValueError(f"unknown fault kind in faults.json: {fault}")
        return action(self, fault)

    def _status(self, fault: Mapping[str, Any]) -> bool:
        self.send_error(int(fault["status"]))
        return False

    def _robots(self) -> bool:
        robots = self.state.robots
        if isinstance(robots, int):
            self.send_error(robots)
            return False
        body = str(robots).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return False

    def _x_robots_tag(self, fault: Mapping[str, Any]) -> bool:
        self._extra_headers["X-Robots-Tag"] = str(fault["value"])
        return True

    def _transient(self, fault: Mapping[str, Any]) -> bool:
        if self._seen > int(fault.get("times", 1)):
            return True
        self.send_error(int(fault.get("status", HTTPStatus.SERVICE_UNAVAILABLE)))
        return False

    def _rate_limited(self, fault: Mapping[str, Any]) -> bool:
        path = unquote(urlsplit(self.path).path)
        wait = float(fault["retry_after_s"])
        with self.state.lock:
            first = self.state.limited_since.setdefault(path, time.monotonic())
        if time.monotonic() - first >= wait:
            return True
        self._extra_headers["Retry-After"] = str(math.ceil(wait))
        self.send_error(HTTPStatus.TOO_MANY_REQUESTS)
        return False

    def _slow(self, fault: Mapping[str, Any]) -> bool:
        time.sleep(float(fault["delay_s"]))
        return True

    def _redirect(self, fault: Mapping[str, Any]) -> bool:
        self.send_response(int(fault.get("status", HTTPStatus.FOUND)))
        self.send_header("Location", str(fault["location"]))
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _wrong_type(self, fault: Mapping[str, Any]) -> bool:
        self._content_type = str(fault["content_type"])
        return True

    def guess_type(self, path: str | Any) -> str:
        return self._content_type or super().guess_type(path)

    def list_directory(self, path: str | Any) -> None:
        self.send_error(HTTPStatus.NOT_FOUND)
        return None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


_ACTIONS = {
    "dead_404": _Handler._status,
    "server_500": _Handler._status,
    "slow": _Handler._slow,
    "redirect": _Handler._redirect,
    "non_image": _Handler._wrong_type,
    "x_robots_tag": _Handler._x_robots_tag,
    "transient": _Handler._transient,
    "rate_limited": _Handler._rate_limited,
}


@dataclass
class _State:
    """Shared by a server's handler threads: the request log and the faults' memory."""

    robots: str | int | None = None
    requests: Counter[str] = field(default_factory=Counter)
    limited_since: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # img2dataset opens many connections at once


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def load_faults(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "faults.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {root} a directory written by `curate synth`?")
    faults = json.loads(path.read_text())
    unknown = {f.get("kind") for f in faults.values()} - set(_ACTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown fault kinds {sorted(map(str, unknown))}")
    return faults


class SynthServer:
    """A running server; use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        robots: str | int | None = None,
    ):
        self.root = Path(root)
        web = self.root / "web"
        if not web.is_dir():
            raise FileNotFoundError(f"{web} not found: is {self.root} a directory written by `curate synth`?")
        if not allow_remote and not is_loopback(host):
            raise PermissionError(
                f"refusing to serve on non-loopback host {host!r} (pass allow_remote=True, or --allow-remote)"
            )
        self._state = _State(robots)
        handler = functools.partial(
            _Handler, directory=str(web), faults=load_faults(self.root), state=self._state
        )
        self._httpd = _Server((host, port), handler)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="synth-http", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> Counter[str]:
        """Requests so far by url path (a copy)."""
        with self._state.lock:
            return Counter(self._state.requests)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> SynthServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ):
        self.close()


def serve(
    root: str | Path, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False
) -> SynthServer:
    """Start serving ``root/web`` in a background thread; ``port=0`` picks a free port."""
    return SynthServer(root, host, port, allow_remote)


def serve_hosts(root: str | Path, robots: Mapping[str, str | int | None]) -> dict[str, SynthServer]:
    """One server per name on 127.0.0.1 (distinct ports, one web root), each with its own robots.txt
    (a text, a status code, or None for the file on disk). Close them all when done."""
    servers: dict[str, SynthServer] = {}
    try:
        for name, text in robots.items():
            servers[name] = SynthServer(root, robots=text)
    except BaseException:
        for server in servers.values():
            server.close()
        raise
    return servers
