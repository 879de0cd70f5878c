"""Hardmatch matching speed: captions/s on web-like captions against open_clip's 1,000 ImageNet names.

Prints the batch matcher's throughput (one core) and, on a sample, two baselines run in the same
process: one combined Python regex applied caption by caption, and a loop over per-class regexes.

    python bench/hardmatch_speed.py --captions 1000000
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import pyarrow as pa

from curation.builders.classvocab import Vocabulary, load_class_names, load_synonyms
from curation.builders.hardmatch import ClassMatcher, decide

FILLER = [
    "photo",
    "of",
    "my",
    "trip",
    "last",
    "summer",
    "with",
    "friends",
    "and",
    "family",
    "at",
    "the",
    "lake",
    "near",
    "our",
    "house",
    "in",
    "the",
    "evening",
    "light",
    "sunset",
    "beautiful",
    "view",
    "nice",
    "day",
    "old",
    "new",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "image",
    "picture",
    "camera",
    "canon",
]


def synthetic_captions(n: int, names: list[str], seed: int = 0) -> pa.Array:
    """Web-like captions: filler words, in 60% of them one or two class names (some plural), 10% not ASCII."""
    rng = np.random.default_rng(seed)
    words = np.array(FILLER)
    lengths = rng.integers(4, 16, size=n)
    n_names = rng.choice([0, 1, 2], size=n, p=[0.4, 0.5, 0.1])
    lower = np.array([x.lower() for x in names])
    out = []
    picks = rng.integers(0, len(FILLER), size=int(lengths.sum()))
    name_picks = rng.integers(0, len(names), size=2 * n)
    pos = 0
    for i in range(n):  # building the benchmark input, not the code under test
        ws = list(words[picks[pos : pos + lengths[i]]])
        pos += lengths[i]
        for k in range(n_names[i]):
            ws.insert(int(rng.integers(0, len(ws) + 1)), lower[name_picks[2 * i + k]] + ("s" if k else ""))
        caption = " ".join(ws).capitalize()
        out.append(caption + " — très joli ✨" if i % 10 == 0 else caption)  # 10% not ASCII
    return pa.array(out, pa.string())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=131072)
    ap.add_argument("--baseline-sample", type=int, default=20_000)
    args = ap.parse_args()

    names = load_class_names("imagenet")
    vocab = Vocabulary.build(names, load_synonyms("conf/hardmatch/imagenet_synonyms.yaml", names))
    t0 = time.perf_counter()
    matcher = ClassMatcher(vocab)
    build_s = time.perf_counter() - t0
    captions = synthetic_captions(args.captions, names)
    chars = sum(len(c) for c in captions.to_pylist()[:10000]) / 10000

    t0 = time.perf_counter()
    labelled = 0
    for start in range(0, len(captions), args.batch):
        m = matcher.match(captions.slice(start, args.batch))
        label, _ = decide(m, "drop")
        labelled += int((label >= 0).sum())
    seconds = time.perf_counter() - t0
    rate = len(captions) / seconds
    print(f"classes: {len(names)}, surface forms: {len(vocab.forms)}, automaton built in {build_s:.2f} s")
    print(f"captions: {len(captions):,} (mean {chars:.0f} chars), labelled: {labelled:,}")
    print(f"batch matcher: {seconds:.2f} s, {rate:,.0f} captions/s (one core)")

    sample = [c.lower() for c in captions.slice(0, args.baseline_sample).to_pylist()]
    forms = sorted((f.replace("  ", " ") for f in vocab.forms), key=len, reverse=True)
    combined = re.compile(r"\b(?:" + "|".join(re.escape(f) for f in forms) + r")\b")
    t0 = time.perf_counter()
    for c in sample:
        combined.findall(c)
    comb_rate = len(sample) / (time.perf_counter() - t0)
    per_class = [re.compile(r"\b" + re.escape(f) + r"\b") for f in forms]
    small = sample[: max(1, args.baseline_sample // 10)]
    t0 = time.perf_counter()
    for c in small:
        for p in per_class:
            p.search(c)
    loop_rate = len(small) / (time.perf_counter() - t0)
    print(f"baseline, one combined Python regex per caption: {comb_rate:,.0f} captions/s")
    print(f"baseline, a regex per class per caption: {loop_rate:,.0f} captions/s")
    print(f"speed-up vs combined regex: {rate / comb_rate:.1f}x, vs per-class loop: {rate / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
