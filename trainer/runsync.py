"""A run folder on object storage: trained in a local work folder, mirrored to its URL as it goes.

open_clip_train (and the supervised loop) write logs and checkpoints to a file system, so a run whose
``--out`` is a URL trains in a local temp folder: :meth:`RunSync.pull` first copies what an unfinished
run left at the URL (its plan, attempts, logs and last training state, so ``--resume latest``
continues from the checkpoint there), and :class:`RunSync` uploads every file that changed, every
:data:`SYNC_EVERY_S` seconds while training runs (a killed run resumes from the last epoch
uploaded; a training state goes up after the logs that describe it) and once at the end,
``run.json`` last: its presence at the URL marks the run finished, exactly as in a local run
folder. Files the trainer deleted (open_clip_train's duplicate final ``epoch_N.pt``) are deleted at
the URL too.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from upath import UPath

from curation.core import storage

log = logging.getLogger(__name__)

SYNC_EVERY_S = 30.0
# What a resumed run needs from an unfinished run at a URL (relative to RUN); the rest is rewritten.
RESUME_FILES = (
    "plan.json",
    "attempts.json",
    "openclip/out.log",
    "openclip/console.log",
    "openclip/checkpoints/epoch_latest.pt",
    "supervised/state.pt",
    "supervised/out.log",
    "supervised/console.log",
)
PARTIAL = ("tmp.pt",)  # open_clip_train's checkpoint before its rename onto epoch_latest.pt


def _state(rel: str) -> bool:
    return rel.endswith(".pt")


def _partial(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name in PARTIAL or name.startswith(".") or name.endswith(".tmp")


class RunSync:
    """Mirror a local work folder to a URL: a background push while training, a last one on exit."""

    def __init__(self, work: Path, remote: UPath, last: str = "run.json", every_s: float | None = None):
        self.work, self.remote, self.last = work, remote, last
        self.every_s = SYNC_EVERY_S if every_s is None else every_s
        self.sent: dict[str, tuple[int, int]] = {}  # relative name -> (mtime_ns, size) uploaded
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def pull(self, names: tuple[str, ...] = RESUME_FILES) -> list[str]:
        """Copy ``names`` (those that exist) from the run folder at the URL into the work folder."""
        pulled = []
        for name in names:
            dst = self.work / name
            try:
                with storage.local_copy(self.remote / name) as tmp:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(tmp, dst)
            except FileNotFoundError:
                continue
            st = dst.stat()
            self.sent[name] = (st.st_mtime_ns, st.st_size)  # already there: not uploaded again
            pulled.append(name)
        if pulled:
            log.info("resuming the run at %s: %s", storage.url(self.remote), ", ".join(pulled))
        return pulled

    def push(self, final: bool = False) -> int:
        """Upload the files that changed since the last push (never ``last``, never a partial file).
        ``final``: also delete at the URL what was uploaded and is gone here, then upload ``last``.

        Training states (``*.pt``) are frozen (hard-linked) first and uploaded after the logs, so the
        logs at the URL always cover at least the epochs of the state there (what a resume counts)."""
        with self._lock:
            present = {p.relative_to(self.work).as_posix(): p for p in self.work.rglob("*") if p.is_file()}
            names = sorted(r for r in present if r != self.last and not _partial(r))
            with tempfile.TemporaryDirectory(prefix=".sync-", dir=self.work.parent) as tmp:
                states = [rel for rel in names if _state(rel)]
                frozen = [self._freeze(rel, present[rel], Path(tmp) / str(i)) for i, rel in enumerate(states)]
                uploads = sum(self._send(rel, present[rel]) for rel in names if not _state(rel))
                uploads += sum(self._send(rel, copy, sig) for rel, copy, sig in filter(None, frozen))
            if final:
                for rel in [r for r in self.sent if r not in present]:
                    storage.remove(self.remote / rel)
                    del self.sent[rel]
                if self.last in present:
                    uploads += self._send(self.last, present[self.last])
            return uploads

    def _freeze(self, rel: str, path: Path, copy: Path) -> tuple[str, Path, tuple[int, int]] | None:
        """A hard link to a training state as it is now (the trainer replaces it, never rewrites it in
        place), or None when it is gone or unchanged since its last upload."""
        try:
            os.link(path, copy)
        except FileNotFoundError:  # replaced or removed by the trainer meanwhile: next time
            return None
        st = copy.stat()
        sig = (st.st_mtime_ns, st.st_size)
        return None if self.sent.get(rel) == sig else (rel, copy, sig)

    def _send(self, rel: str, path: Path, sig: tuple[int, int] | None = None) -> int:
        if sig is None:
            try:
                st = path.stat()
            except FileNotFoundError:  # replaced or removed by the trainer meanwhile
                return 0
            sig = (st.st_mtime_ns, st.st_size)
        if self.sent.get(rel) == sig:
            return 0
        storage.upload(path, self.remote / rel)  # a copy: the local file stays
        self.sent[rel] = sig
        return 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.push()
            except Exception as exc:  # a failed upload is retried next time; training goes on
                where, why = storage.url(self.remote), storage.describe(exc)
                log.warning("uploading the run to %s failed (retried): %s", where, why)

    def __enter__(self) -> RunSync:
        self._thread = threading.Thread(target=self._loop, name="run-sync", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.push(final=True)
        except Exception as push_exc:
            if exc is None:
                raise
            where, why = storage.url(self.remote), storage.describe(push_exc)
            log.error("could not upload the run to %s: %s", where, why)
