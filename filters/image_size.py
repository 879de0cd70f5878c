"""Image size rules: DataComp's basic image rule (shorter side >= 200 px, aspect ratio <= 3).

Sizes come from the image as it was on the web: img2dataset's ``original_width`` /
``original_height``, which DataComp's metadata also carries. img2dataset's ``width`` / ``height``
are the sizes *after* its resize, so they are used only where the original size is absent, and
only when ``fallback_to_resized`` allows it; each row records which one it used
(``image_size_from``), and a warning says how many rows fell back.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.stage import ConfiguredFilter, Filter, Verdict, filter_kind

log = logging.getLogger(__name__)


class ImageSizeConfig(ConfiguredFilter):
    min_side: int = 200  # DataComp: min(original_width, original_height) >= 200
    max_aspect: float = 3.0  # DataComp: max(w, h) / min(w, h) <= 3
    max_side: int | None = None  # optional upper bound (decompression bombs, huge scans)
    fallback_to_resized: bool = True  # use width/height where original_* is missing


def _column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A size column as float (NaN where null or absent), so missing values flow into a reason."""
    if name not in batch.schema.names:
        return np.full(batch.num_rows, np.nan)
    return pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False)


@filter_kind("image_size", ImageSizeConfig)
class ImageSizeFilter(Filter):
    def __init__(self, cfg: ImageSizeConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    def measure(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Shorter side, longer side, aspect ratio (NaN where the size is unknown or not positive) and
        whether img2dataset's resized size stood in for the original."""
        w, h = _column(batch, "original_width"), _column(batch, "original_height")
        resized = np.zeros(batch.num_rows, dtype=bool)
        if self.cfg.fallback_to_resized:
            rw, rh = _column(batch, "width"), _column(batch, "height")
            resized = ~(np.isfinite(w) & np.isfinite(h)) & np.isfinite(rw) & np.isfinite(rh)
            w, h = np.where(resized, rw, w), np.where(resized, rh, h)
        bad = ~(np.isfinite(w) & np.isfinite(h)) | (w <= 0) | (h <= 0)
        short = np.where(bad, np.nan, np.fmin(w, h))
        long = np.where(bad, np.nan, np.fmax(w, h))
        with np.errstate(invalid="ignore"):
            return short, long, long / short, resized & ~bad

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        short, long, aspect, resized = self.measure(batch)
        if resized.any():
            log.warning(
                "%s: %d of %d rows have no original size; judged on img2dataset's resized width/height",
                self.name,
                int(resized.sum()),
                batch.num_rows,
            )
        max_side = self.cfg.max_side
        return Verdict.from_rules(
            batch.num_rows,
            [
                ("missing_size", np.isnan(short)),
                ("too_small", short < self.cfg.min_side),
                ("too_large", long > max_side if max_side else np.zeros(batch.num_rows, dtype=bool)),
                ("extreme_aspect", aspect > self.cfg.max_aspect),
            ],
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        short, _, aspect, resized = self.measure(batch)
        missing = np.isnan(short)
        return {
            "image_short_side": pa.array(short, pa.float32(), mask=missing),
            "image_aspect": pa.array(aspect, pa.float32(), mask=missing),
            "image_size_from": pa.array(np.where(resized, "resized", "original"), pa.string(), mask=missing),
        }
