"""The embedded default's synthetic web crawl: generator, ground truth and local HTTP server.

``generate(cfg, out)`` writes a crawl of image-text pairs over drawable concepts in several web
styles with junk in known proportions, the files a local server serves, a ground-truth table,
an evaluation suite, a clean seed set and an ImageNet analogue. ``serve(out)`` serves it on
127.0.0.1. See docs/synth.md.

Names are imported lazily: render workers import only the light modules they need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SynthConfig": "curation.synth.config",
    "generate": "curation.synth.build",
    "rebase_urls": "curation.synth.tables",
    "serve": "curation.synth.server",
    "SynthServer": "curation.synth.server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'curation.synth' has no attribute {name!r}")
