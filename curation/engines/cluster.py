"""What the Spark and Ray engines share: making this project importable on their workers."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
LOOPBACK = "127.0.0.1"


def worker_pythonpath() -> str:
    """PYTHONPATH for workers: the project root first, so an uninstalled checkout also works."""
    parts = [PROJECT_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return os.pathsep.join(dict.fromkeys(parts))
