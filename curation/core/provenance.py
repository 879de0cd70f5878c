"""Which code made an output: the package version and, from a checkout, its git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from curation import __version__

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    """``git -C ROOT ARGS``'s output, or None outside a checkout (or without git)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(short: bool = False) -> str | None:
    return _git("rev-parse", "--short=12", "HEAD") if short else (_git("rev-parse", "HEAD") or None)


def code_version(mark_dirty: bool = False) -> str:
    """``VERSION+gSHA`` (``.dirty`` appended, if asked, when tracked files are edited), else ``VERSION``."""
    sha = git_commit(short=True)
    if not sha:
        return __version__
    dirty = mark_dirty and bool(_git("status", "--porcelain", "--untracked-files=no"))
    return f"{__version__}+g{sha}" + (".dirty" if dirty else "")
