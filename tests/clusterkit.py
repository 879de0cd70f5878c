"""Real clusters for tests, inside a network namespace that has only loopback.

Ray's ``ray start --head`` reports a routable node address and listens on every interface even when
told ``--node-ip-address=127.0.0.1``; so a test that starts a Spark standalone cluster or a Ray
head reruns itself under ``unshare -rnpf --mount-proc`` (a user, network and PID namespace: no
interface but ``lo``, and every process it started dies with it), where no socket can reach
anything but 127.0.0.1. Inside, :func:`listening_addresses` lists what listens, for the test to
check, and the helpers below start clusters and kill their workers the way a lost machine would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSIDE_ENV = "CURATION_TEST_LOOPBACK_NS"
SPARK_MASTER = "spark://127.0.0.1:7077"  # a private namespace: fixed ports collide with nobody
RAY_GCS = "127.0.0.1:6380"
RAY_DASHBOARD = "http://127.0.0.1:8265"
RAY_CLIENT = "ray://127.0.0.1:10001"


def inside() -> bool:
    return os.environ.get(INSIDE_ENV) == "1"


def rerun_inside(nodeid: str, timeout: float = 900) -> None:
    """Run the test ``nodeid`` again inside a loopback-only namespace; fail with its output if it fails."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a loopback-only namespace")
    probe = subprocess.run(["unshare", "-rnpf", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged namespaces are not allowed here: {probe.stderr.decode().strip()}")
    env = {**os.environ, INSIDE_ENV: "1", "PYTHONPATH": str(ROOT)}
    inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider '{nodeid}'"
    done = subprocess.run(
        ["unshare", "-rnpf", "--mount-proc", "sh", "-c", inner],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"inside the loopback namespace:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    )
    if " passed" not in done.stdout and " skipped" in done.stdout:  # the inner run said why
        pytest.skip(f"inside the loopback namespace: {done.stdout.strip().splitlines()[-1]}")
    assert " passed" in done.stdout, done.stdout[-4000:]


def interfaces() -> list[str]:
    """This network namespace's interfaces (``/proc/net/dev`` is per namespace)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def listening_addresses() -> set[str]:
    """Every local address a TCP socket listens on in this namespace, as text."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # /proc prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, packed))
    return found


def non_loopback(addresses: set[str]) -> set[str]:
    """The addresses that are neither loopback nor a wildcard (which, with only ``lo``, is loopback)."""
    ok = {"0.0.0.0", "::", "::1"}
    return {a for a in addresses if a not in ok and not a.removeprefix("::ffff:").startswith("127.")}


def processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process visible here."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        yield int(entry.name), ppid, cmd


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants at once, as a machine that died would stop them."""
    table = list(processes())
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent, _ in table if parent in tree} - tree
        tree |= more
        grew = bool(more)
    for p in tree:
        with suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return sorted(tree)


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def curate(args: Sequence[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """``python -m pipelines ARGS`` as a user would start it, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *map(str, args)],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **kw,
    )  # fmt: skip


@contextmanager
def spark_standalone(root: Path, cores: int = 2, conf: dict[str, str] | None = None) -> Iterator[Path]:
    """A Spark standalone master and one worker on 127.0.0.1, started with ``spark-class``.

    Yields the conf folder (``SPARK_CONF_DIR``) a driver should use: ``spark-defaults.conf`` there
    holds ``conf`` (a user's cluster settings).
    """
    conf_dir = root / "spark-conf"
    conf_dir.mkdir(parents=True)
    (conf_dir / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in (conf or {}).items()))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_CONF_DIR": str(conf_dir)}
    logs = root / "spark-logs"
    logs.mkdir()
    master = subprocess.Popen(
        ["spark-class", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", "7077", "--webui-port", "8080"],
        env=env, stdout=(logs / "master.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    worker = subprocess.Popen(
        ["spark-class", "org.apache.spark.deploy.worker.Worker", SPARK_MASTER, "--host", "127.0.0.1",
         "--cores", str(cores), "--memory", "2g", "--webui-port", "8081",
         "--work-dir", str(root / "spark-work")],
        env=env, stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(
            lambda: "Successfully registered with master" in (logs / "worker.log").read_text(),
            180, "the Spark worker to register", step=0.5,
        )  # fmt: skip
        yield conf_dir
    finally:
        for proc in (worker, master):
            kill_tree(proc.pid)
            proc.wait()


def spark_executors() -> list[int]:
    """Pids of the standalone worker's executor JVMs."""
    return [p for p, _, cmd in processes() if "CoarseGrainedExecutorBackend" in cmd and "java" in cmd]


@contextmanager
def ray_head(
    root: Path, cpus: int = 2, env: dict[str, str] | None = None, dashboard: bool = False
) -> Iterator[None]:
    """A Ray head on 127.0.0.1 (``ray start --head``), stopped with ``ray stop --force`` at the end.

    ``dashboard``: with the dashboard (job submission, ``RAY_DASHBOARD``) and the Ray Client server
    (``RAY_CLIENT``): what ``ray job submit`` and ``ray://`` addresses need (``ray[default,client]``).
    """
    assert inside(), "ray stop would stop every Ray of this user outside a private PID namespace"
    run_env = {**os.environ, **(env or {})}
    # not /tmp/ray (other users' sessions live there), nor under root: socket paths must stay < 108 bytes
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", "--port", RAY_GCS.split(":")[1],
         f"--num-cpus={cpus}", "--disable-usage-stats", f"--temp-dir={temp}",
         *(["--include-dashboard=true", "--dashboard-host=127.0.0.1", "--dashboard-port=8265",
            "--ray-client-server-port=10001"] if dashboard else ["--include-dashboard=false"])],
        env=run_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield
    finally:
        subprocess.run(["ray", "stop", "--force"], env=run_env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def ray_shard_tasks() -> list[int]:
    """Pids of Ray workers running a shard task (Ray names the process after the task: ``ray::_run``)."""
    return [p for p, _, cmd in processes() if cmd.startswith("ray::_run")]


def read_event_log(folder: Path) -> list[dict]:
    """Every event of the Spark event logs under ``folder`` (uncompressed; one JSON object a line)."""
    events = []
    for path in sorted(p for p in folder.rglob("events_*") if p.is_file()):  # not Hadoop's .crc files
        events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return events
