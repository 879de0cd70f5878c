"""Hardmatch precision and recall on the hand-labelled caption set (tests/data/hardmatch_captions.tsv).

Runs the matcher as ``curate hardmatch`` does with ``conf/hardmatch/imagenet.yaml`` (open_clip's
ImageNet names + the shipped synonyms, ambiguous captions dropped) and prints the figures and every
caption where the label differs from the hand label.

    python bench/hardmatch_handlabelled.py [--config conf/hardmatch/imagenet.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa

from curation.builders.hardmatch import ClassMatcher, HardmatchConfig, decide
from curation.builders.hardmatch_eval import read_labelled_captions, score_labels
from curation.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(ROOT / "conf/hardmatch/imagenet.yaml"))
    ap.add_argument("--data", default=str(ROOT / "tests/data/hardmatch_captions.tsv"))
    args = ap.parse_args()
    cfg = load_config(HardmatchConfig, args.config, [])
    if cfg.synonyms is not None and not Path(cfg.synonyms).is_absolute():
        cfg = cfg.model_copy(update={"synonyms": ROOT / cfg.synonyms})
    matcher = ClassMatcher.from_config(cfg)
    captions, gold = read_labelled_captions(args.data)
    label, _ = decide(matcher.match(pa.array(captions, pa.string())), cfg.ambiguous)
    predicted = [matcher.vocab.class_names[x] if x >= 0 else None for x in label]
    scores = score_labels(predicted, gold)
    for e in scores.pop("errors"):
        print(f"  {e['predicted']!s:28} gold {e['gold']!s:28} {captions[e['index']]!r}")
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
