"""A filter plugin: drop captions with more than ``max_digits`` digits (SKUs, file names, dates)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.stage import ConfiguredFilter, Filter, Verdict, filter_kind


class CaptionDigitsConfig(ConfiguredFilter):
    max_digits: int = 4


@filter_kind("caption_digits", CaptionDigitsConfig)
class CaptionDigitsFilter(Filter):
    def __init__(self, cfg: CaptionDigitsConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        text = pc.fill_null(batch.column("caption"), "")
        digits = pc.count_substring_regex(text, r"[0-9]").to_numpy(zero_copy_only=False)
        return Verdict.from_rules(batch.num_rows, [("too_many_digits", digits > self.cfg.max_digits)])
