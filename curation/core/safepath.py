"""Names that come from data (column names, sample keys, set names) made safe to use in file paths.

A parquet column called ``../../x`` or a key with a slash must never choose where a file is
written. :func:`safe_name` turns any string into one plain path component; :func:`child` refuses a
relative path that would leave its root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class UnsafePathError(ValueError):
    """A name from data that would point outside the folder it belongs in."""


def safe_name(name: str) -> str:
    """One path component: runs of other characters become ``_``; never empty, hidden, ``.`` or ``..``."""
    return UNSAFE.sub("_", str(name)).lstrip(".") or "_"


def unique_safe_names(names: list[str]) -> dict[str, str]:
    """:func:`safe_name` of each name, with ``-2``, ``-3`` ... where two names would become one."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = candidate = safe_name(name)
        n = 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate)
        out[name] = candidate
    return out


def child(root: Path, relative: str, what: str = "path") -> Path:
    """``root / relative``, refused when ``relative`` is absolute or climbs out of ``root`` with ``..``."""
    norm = os.path.normpath(relative)
    if os.path.isabs(relative) or norm == ".." or norm.startswith(".." + os.sep):
        raise UnsafePathError(f"{what} {relative!r} points outside {root}")
    return root / norm
