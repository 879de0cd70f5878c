"""A local HTTP server for the synthetic crawl: serves ``ROOT/web`` and plays ``ROOT/faults.json``.

Standard library only (``ThreadingHTTPServer``), so img2dataset downloads from it exactly as from
the web. Faults per url path: ``dead_404`` and ``server_500`` answer with that status, ``slow``
answers after a delay, ``non_image`` serves its HTML file with an HTML content type, ``redirect``
answers 302 to the real file. Corrupt images need no entry: their bytes on disk are corrupt.
It binds 127.0.0.1 and refuses other interfaces unless asked explicitly.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
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

    def __init__(self, *args: Any, faults: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> None:
        self.faults = faults
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self._apply_fault():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._apply_fault():
            super().do_HEAD()

    def _apply_fault(self) -> bool:
        """Act on the path's fault; True if the file should then be served normally."""
        fault = self.faults.get(unquote(urlsplit(self.path).path))
        if fault is None:
            return True
        action = _ACTIONS.get(str(fault.get("kind")))
        if action is None:
            raise ValueError(f"unknown fault kind in faults.json: {fault}")
        return action(self, fault)

    def _status(self, fault: Mapping[str, Any]) -> bool:
        self.send_error(int(fault["status"]))
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
}


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

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False):
        self.root = Path(root)
        web = self.root / "web"
        if not web.is_dir():
            raise FileNotFoundError(f"{web} not found: is {self.root} a directory written by `curate synth`?")
        if not allow_remote and not is_loopback(host):
            raise PermissionError(
                f"refusing to serve on non-loopback host {host!r} (pass allow_remote=True, or --allow-remote)"
            )
        handler = functools.partial(_Handler, directory=str(web), faults=load_faults(self.root))
        self._httpd = _Server((host, port), handler)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="synth-http", daemon=True)
        self._thread.start()

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
