"""A real S3 server on 127.0.0.1 (moto's server mode) for tests, and helpers to look inside it.

``moto_server`` starts one ThreadedMotoServer per test session on a free loopback port; the ``s3``
fixture points the AWS environment at it (endpoint, a test key and :data:`SECRET`) and gives each
test a fresh bucket. Spark and Ray workers on this machine inherit the environment, so they reach
the same server. ``auth_moto`` starts a second server, in a subprocess, that checks credentials and
IAM policies (for the wrong-key and read-only-prefix tests).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SECRET = "s3kit-secret-" + uuid.uuid4().hex  # grep for it in everything a job wrote
ACCESS_KEY = "AKIAS3KITTEST0000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clear_clients() -> None:
    from curation.core import storage

    storage.reset_clients()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def aws_env(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never look for an instance role (no traffic off loopback)
    }


@dataclass
class S3:
    endpoint: str
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def fs(self):  # type: ignore[no-untyped-def]
        import fsspec

        return fsspec.filesystem("s3")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (relative to the bucket)."""
        root = f"{self.bucket}/{prefix}".rstrip("/")
        found = self.fs().find(root)
        return sorted(k[len(self.bucket) + 1 :] for k in found)


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    for key, value in aws_env(moto_server).items():
        monkeypatch.setenv(key, value)
    _clear_clients()
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    import fsspec

    fsspec.filesystem("s3").mkdir(bucket)
    yield S3(moto_server, bucket)
    _clear_clients()


@pytest.fixture(scope="session")
def auth_moto() -> Iterator[str]:
    """A moto server that enforces credentials and IAM policies (after the first few set-up calls)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server (auth mode) did not start")
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()
