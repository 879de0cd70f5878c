"""Near duplicates: images whose embeddings are almost the same (re-encoded, resized, cropped copies).

A global filter (see :mod:`curation.filtering.global_view`): phase 1 reads every pool sample's image
embedding (``embeddings: {attribute, column}``: the copy descriptor ``curate copydesc`` writes under
``POOL/attributes/copydesc/``, which tells copies from look-alikes, or the float16 ``image_emb``
list the scoring stage writes, a semantic embedding that also merges distinct images of one
concept; docs/filters.md), links samples whose cosine similarity is >= ``threshold`` among
each one's ``k`` nearest neighbours (faiss, exact or IVF; see :mod:`curation.filtering.dedup`), and groups
linked samples into connected components. Each group keeps one representative (best ``prefer``
score, then the smallest uid); the others are dropped as ``near_duplicate`` with ``<name>_of``
naming the representative. ``<name>_nn_sim`` (the cosine to the nearest other sample) is kept for
every sample, so a stricter threshold can be read off without searching again. A sample without
a usable embedding is dropped as ``missing_embedding``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.pool import Pool
from curation.core.stage import ConfiguredFilter, Verdict, filter_kind
from curation.filtering.dedup import SearchParams, near_duplicate_groups
from curation.filtering.embeddings import EmbeddingRef, gather_embeddings
from curation.filtering.global_view import GlobalFilter, ScoreRef, uid_keys, write_shard_lookups

LOOKUP_SCHEMA = pa.schema(
    [("uid", pa.string()), ("rep", pa.string()), ("group_size", pa.int64()), ("nn_sim", pa.float32())]
)


class NearDupConfig(ConfiguredFilter):
    embeddings: EmbeddingRef = EmbeddingRef()
    threshold: float = 0.95  # cosine; see docs/filters.md for how it was tuned
    k: int = 16  # neighbours searched per sample
    index: Literal["flat", "ivf"] = "flat"  # ivf for pools of millions
    nlist: int | None = None  # ivf lists (default 4 * sqrt(n))
    nprobe: int = 16  # ivf lists probed per query
    batch_size: int = 16384  # queries per faiss search call
    prefer: ScoreRef | None = None  # keep the highest score per group (default: the smallest uid)


@filter_kind("near_dup", NearDupConfig)
class NearDupFilter(GlobalFilter):
    lookup_columns = ("rep", "group_size", "nn_sim")

    def __init__(self, cfg: NearDupConfig) -> None:
        super().__init__(cfg)
        self.cfg: NearDupConfig = cfg

    def search_params(self) -> SearchParams:
        c = self.cfg
        return SearchParams(c.threshold, c.k, c.index, c.nlist, c.nprobe, c.batch_size)

    def prepare(self, pool: Pool, out: Path) -> None:
        emb = gather_embeddings(pool, self.cfg.embeddings, f"{self.name}: embeddings", self.cfg.prefer)
        rows = emb.valid_rows()
        uids = emb.uids.take(pa.array(rows, pa.int64()))
        scores = emb.scores[rows] if emb.scores is not None else None
        groups = near_duplicate_groups(emb.vectors[rows], uid_keys(uids), self.search_params(), scores)
        shard_names = pa.array(emb.shards, pa.string()).take(pa.array(emb.shard_index[rows]))
        table = pa.table(
            {
                "shard": shard_names,
                "uid": uids,
                "rep": uids.take(pa.array(groups.rep, pa.int64())),
                "group_size": pa.array(groups.size, pa.int64()),
                "nn_sim": pa.array(groups.nn_sim, pa.float32()),
            }
        )
        write_shard_lookups(out, emb.shards, table.to_batches(), LOOKUP_SCHEMA)

    def verdict(self, batch: pa.RecordBatch) -> Verdict:
        rep = batch.column(self.input_column("rep"))
        duplicate = pc.fill_null(pc.not_equal(rep, batch.column("uid")), False)
        return Verdict.from_rules(
            batch.num_rows,
            [
                ("missing_embedding", rep.is_null().to_numpy(zero_copy_only=False)),
                ("near_duplicate", duplicate.to_numpy(zero_copy_only=False)),
            ],
        )

    def extra_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        rep = batch.column(self.input_column("rep"))
        duplicate = pc.fill_null(pc.not_equal(rep, batch.column("uid")), False)
        return {
            f"{self.name}_of": pc.if_else(duplicate, rep, pa.scalar(None, pa.string())),
            f"{self.name}_group_size": batch.column(self.input_column("group_size")),
            f"{self.name}_nn_sim": batch.column(self.input_column("nn_sim")),
        }
