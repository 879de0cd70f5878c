"""Caption rules: DataComp's basic text rule (more than 2 words, more than 5 characters), empty captions."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.stage import ConfiguredFilter, Filter, Verdict, filter_kind


class CaptionLengthConfig(ConfiguredFilter):
    min_words: int = 3  # DataComp keeps captions with more than 2 words
    min_chars: int = 6  # ... and more than 5 characters
    max_chars: int = 2000


@filter_kind("caption_length", CaptionLengthConfig)
class CaptionLengthFilter(Filter):
    def __init__(self, cfg: CaptionLengthConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        text = pc.utf8_trim_whitespace(pc.fill_null(batch.column("caption"), ""))
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False)
        words = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
        n = batch.num_rows
        return Verdict.from_rules(
            n,
            [
                ("empty_caption", chars == 0),
                ("too_few_words", words < self.cfg.min_words),
                ("too_few_chars", chars < self.cfg.min_chars),
                ("too_long_caption", chars > self.cfg.max_chars),
            ],
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        text = pc.utf8_trim_whitespace(pc.fill_null(batch.column("caption"), ""))
        words = pc.list_value_length(pc.utf8_split_whitespace(text))
        return {"caption_words": pc.cast(words, pa.int32()), "caption_chars": pc.utf8_length(text)}
