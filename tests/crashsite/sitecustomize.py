"""Deterministic kill points for the resume tests (tests/crashkit.py puts this folder on PYTHONPATH).

Python imports ``sitecustomize`` at start-up in every process, spawned workers included. When
``CURATION_KILL_AT=<glob>|<phase>|<n>`` is set, ``curation.core.io.atomic_path`` is wrapped: the
``n``-th atomic write (counted over all processes of the run, through a shared counter file) whose
path matches ``<glob>`` SIGKILLs the whole process group, either ``inside`` the write (the temp file
is written, not yet renamed: what a kill during a marker or stats write leaves) or right ``after``
the rename. So each test kills at the write point it names, not wherever the timing lands.
"""

from __future__ import annotations

import os

_SPEC = os.environ.get("CURATION_KILL_AT")

if _SPEC:
    import contextlib
    import fnmatch
    import signal

    import curation.core.io as _io

    _GLOB, _PHASE, _N = _SPEC.split("|")
    _COUNTER = os.environ["CURATION_KILL_COUNTER"]
    _original = _io.atomic_path

    def _kill() -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def _event() -> int:
        """This match's rank over every process of the run (O_APPEND writes are atomic)."""
        fd = os.open(_COUNTER, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, b".")
            return os.lseek(fd, 0, os.SEEK_CUR)  # just past this write: unique per write
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _killing_atomic_path(path):  # type: ignore[no-untyped-def]
        hit = fnmatch.fnmatch(str(path), _GLOB) and _event() == int(_N)
        with _original(path) as tmp:
            yield tmp
            if hit and _PHASE == "inside":
                _kill()
        if hit and _PHASE == "after":
            _kill()

    _io.atomic_path = _killing_atomic_path
