"""Entry point of the training subprocess: open_clip_train's ``main`` with the project's additions.

``python -m trainer.openclip_entry <open_clip_train arguments>`` (or under ``torchrun``) registers
the project's model configs (``conf/models``), seeds the data order (:mod:`trainer.seeding`) and
opens shards on object storage in-process (:func:`trainer.shards.install_fsspec_opener`), then
hands every argument to ``open_clip_train.main.main`` unchanged.
"""

from __future__ import annotations

import sys

from open_clip_train import main as oc_main
from open_clip_train.params import parse_args

from curation.core.models import register_project_models
from trainer import seeding
from trainer.shards import install_fsspec_opener


def main(argv: list[str]) -> int:
    register_project_models()
    seeding.install(parse_args(argv).seed)
    install_fsspec_opener()
    result = oc_main.main(argv)
    return result if isinstance(result, int) and result != 0 else 0


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
