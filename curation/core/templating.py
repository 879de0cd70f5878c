"""One Jinja environment for every page the project renders (cards, ablation reports).

Strict about missing names, so a template typo fails loudly; HTML pages autoescape, because the
text they show (captions, urls, config values) comes from untrusted data.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def template_env(autoescape: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
