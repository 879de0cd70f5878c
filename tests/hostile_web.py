"""A hostile little web on 127.0.0.1 for download tests: huge and lying images, redirects, slow urls.

Images are written as PNG/JPEG bytes directly (a 20000x30000 PNG is streamed row by row through
zlib), so building the crawl never holds a decoded huge image in the test process.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, color_type: int = 0, bit_depth: int = 1, noisy_rows: int = 0) -> bytes:
    """A valid PNG of any size, streamed: rows of zeros, the first ``noisy_rows`` random (incompressible)."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    comp = zlib.compressobj(6)
    zero_row = b"\x00" * (row_bytes + 1)  # filter byte 0 + pixels
    parts = []
    for y in range(height):
        row = b"\x00" + os.urandom(row_bytes) if y < noisy_rows else zero_row
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_bytes(i: int, size: tuple[int, int] = (48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 37 % 256, i * 91 % 256, 120)).save(buf, "JPEG")
    return buf.getvalue()


@dataclass
class Route:
    body: bytes = b""
    code: int = 200
    location: str | None = None
    delay: float = 0.0
    ctype: str = "image/jpeg"


@dataclass
class WebServer:
    """A 127.0.0.1 server with fixed routes; every request's path is logged in ``requests``."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    port: int = 0
    delay: float = 0.0  # added to every request (slow crawls)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def serve(web: WebServer) -> Iterator[WebServer]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            web.requests.append(self.path)
            route = web.routes.get(self.path, Route(b"not found", 404, ctype="text/plain"))
            time.sleep(route.delay + web.delay)
            try:
                self.send_response(route.code)
                if route.location:
                    self.send_header("Location", route.location)
                self.send_header("Content-Type", route.ctype)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    httpd = Server(("127.0.0.1", 0), Handler)
    web.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield web
    finally:
        httpd.shutdown()
        httpd.server_close()
