"""Absolute CLIP-score threshold (LAION's rule: keep cosine(image, text) >= 0.28 with ViT-B/32).

The score is read either from the score stage's attribute table (``column: clip_score_vit_b_32``
reads ``POOL/attributes/clip_score_vit_b_32/NNNNN.parquet``, joined by uid; ``attribute`` names
another folder) or, with ``from_pool: true``, from a pool column (DataComp metadata pools ship
``clip_b32_similarity_score`` and ``clip_l14_similarity_score``).
A sample without a finite score is dropped as ``missing_score``, never silently kept or lost.
Top-k% selection is a global selection, not this filter.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.pool import Pool
from curation.core.stage import ConfiguredFilter, Filter, SideInput, Verdict, filter_kind
from curation.filtering.global_view import DEFAULT_SCORE


class ClipScoreConfig(ConfiguredFilter):
    column: str = DEFAULT_SCORE  # the score stage's column; DataComp metadata: clip_b32_similarity_score
    attribute: str | None = None  # attribute folder (default: the column's name, as the score stage writes)
    from_pool: bool = False  # read ``column`` from the pool's own parquet (DataComp metadata pools)
    min_score: float = 0.28  # LAION-400M's threshold for OpenAI ViT-B/32
    max_score: float | None = None  # optional ceiling (text-in-image spam scores very high)


@filter_kind("clip_score", ClipScoreConfig)
class ClipScoreFilter(Filter):
    def __init__(self, cfg: ClipScoreConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    def side_inputs(self, pool: Pool) -> list[SideInput]:
        if self.cfg.from_pool:
            return []
        return [SideInput(pool.attributes_dir(self.cfg.attribute or self.cfg.column), (self.cfg.column,))]

    def scores(self, batch: pa.RecordBatch) -> np.ndarray:
        name = self.cfg.column if self.cfg.from_pool else self.input_column(self.cfg.column)
        if name not in batch.schema.names:
            raise KeyError(f"filter {self.name}: no score column {name!r} in {batch.schema.names}")
        return pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False)

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        score = self.scores(batch)
        ceiling = self.cfg.max_score if self.cfg.max_score is not None else np.inf
        with np.errstate(invalid="ignore"):
            return Verdict.from_rules(
                batch.num_rows,
                [
                    ("missing_score", ~np.isfinite(score)),
                    ("low_clip_score", score < self.cfg.min_score),
                    ("high_clip_score", score > ceiling),
                ],
            )
