"""Member bytes of pool tars on object storage, read as byte ranges (no whole-tar download).

A reshard's write job needs, per sample, one span of its pool tar (the sample's adjacent members).
On a local disk each span is one ``pread`` (:class:`curation.core.tarindex.TarReader`). On object
storage a request per span would cost a round trip per sample, and downloading every pool tar a
shuffled output shard draws from would read the pool once per output shard. Instead the spans of
a batch of samples (``BATCH_BYTES`` of them) are merged per tar where they lie close together
(``MAX_GAP``; a pool-ordered plan reads its samples in long runs) into blocks of up to ``MAX_BLOCK``,
and the blocks are fetched with one ``cat_ranges`` call (concurrent requests on s3fs, gcsfs...).
Each span is then a view into its block, so memory stays about one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from curation.core import storage

BATCH_BYTES = 64 << 20  # span bytes fetched together (a batch holds these plus its gaps)
# Spans of one tar at most MAX_GAP apart are read in one request, up to MAX_BLOCK bytes per request
# (longer runs go out as parallel requests). A gap's bytes are read for nothing: at most MAX_GAP
# (about one web image) per span.
MAX_GAP = 64 << 10
MAX_BLOCK = 8 << 20


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, end)`` of the object ``loc`` (a location on object storage), wanted for ``item``."""

    item: Any
    loc: Any
    start: int
    end: int


def fetch_spans(spans: Iterable[Span], batch_bytes: int = BATCH_BYTES) -> Iterator[tuple[Any, memoryview]]:
    """(item, bytes of its span) for every span, in the order given, fetched batch by batch."""
    batch: list[Span] = []
    size = 0
    for span in spans:
        batch.append(span)
        size += span.end - span.start
        if size >= batch_bytes:
            yield from _fetch(batch)
            batch, size = [], 0
    if batch:
        yield from _fetch(batch)


def merge_blocks(spans: list[Span]) -> tuple[list[Span], list[int]]:
    """Blocks (``item`` = the object's file-system path) covering ``spans``, and each span's block."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i].loc.path, spans[i].start, spans[i].end))
    blocks: list[Span] = []
    where = [0] * len(spans)
    for i in order:
        s = spans[i]
        last = blocks[-1] if blocks else None
        if (
            last is not None
            and last.item == s.loc.path
            and s.start - last.end <= MAX_GAP
            and max(last.end, s.end) - last.start <= MAX_BLOCK
        ):
            blocks[-1] = Span(last.item, last.loc, last.start, max(last.end, s.end))
        else:
            blocks.append(Span(s.loc.path, s.loc, s.start, s.end))
        where[i] = len(blocks) - 1
    return blocks, where


def _fetch(spans: list[Span]) -> Iterator[tuple[Any, memoryview]]:
    blocks, where = merge_blocks(spans)
    fs = blocks[0].loc.fs
    with storage.storage_errors(blocks[0].loc, "read"):
        data = fs.cat_ranges(
            [b.item for b in blocks], [b.start for b in blocks], [b.end for b in blocks], on_error="return"
        )
    for block, got in zip(blocks, data, strict=True):
        if isinstance(got, BaseException):
            with storage.storage_errors(block.loc, "read"):
                raise got
        if len(got) != block.end - block.start:
            raise OSError(
                f"{storage.url(block.loc)}: short read at {block.start} ({len(got)} of "
                f"{block.end - block.start} bytes); truncated tar?"
            )
    views = [memoryview(d) for d in data]
    for span, b in zip(spans, where, strict=True):
        offset = span.start - blocks[b].start
        yield span.item, views[b][offset : offset + span.end - span.start]
