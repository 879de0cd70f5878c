"""Cleaning Flickr / YFCC100M text fields into caption text, a column at a time.

YFCC100M stores title, description and tags URL-encoded the way HTML forms are: a space is ``+``,
other bytes are ``%XX`` (``Reflected+Duck``, ``caf%C3%A9``); tags are comma-separated, each one
encoded (``lake,new+york``). Decoding is ``urllib.parse.unquote_plus`` semantics: ``+`` becomes a
space first, then ``%XX`` escapes are decoded, so an encoded plus (``%2B``) stays a plus. (SLIP's
YFCC15M script does ``unquote(x).replace('+', ' ')``, which turns a real ``%2B`` into a space.)
The decoded text still holds what Flickr users typed: HTML markup (``<a href=...>``, ``<br />``)
and entities (``&amp;``, ``&quot;``), sometimes escaped markup (``&lt;b&gt;``). Cleaning unescapes
entities, removes tags, and collapses whitespace.

Most steps are Arrow compute kernels; the two with no kernel (``%XX`` decoding, HTML entities) run
in Python only on the rows that contain ``%`` or ``&``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TAG_RE = r"<[^<>]*>"
PERCENT_RE = r"%[0-9A-Fa-f]{2}"
URL_RE = r"(?:https?://|www\.)\S+"


def _map_where(arr: pa.Array, mask: pa.Array, fn: Callable[[str], str]) -> pa.Array:
    """Apply a Python function to the rows where ``mask`` is true, leaving the others to Arrow."""
    rows = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    if len(rows) == 0:
        return arr
    changed = pa.array([fn(s) for s in arr.take(pa.array(rows)).to_pylist()], pa.string())
    if len(rows) == len(arr):
        return changed
    positions = np.zeros(len(arr), dtype=bool)
    positions[rows] = True
    return pc.replace_with_mask(arr, pa.array(positions), changed)


def url_decode(arr: pa.Array) -> pa.Array:
    """``unquote_plus`` on every row: ``+`` -> space, then ``%XX`` (invalid UTF-8 -> U+FFFD)."""
    arr = pc.replace_substring(arr, "+", " ")
    return _map_where(arr, pc.match_substring_regex(arr, PERCENT_RE), lambda s: unquote(s, errors="replace"))


def clean_text(arr: pa.Array, remove_urls: bool = False) -> pa.Array:
    """Strip markup, unescape entities, strip escaped markup, collapse whitespace; nulls stay null."""
    arr = pc.replace_substring_regex(arr, TAG_RE, " ")
    arr = _map_where(arr, pc.match_substring(arr, "&"), html.unescape)
    arr = pc.replace_substring_regex(arr, TAG_RE, " ")  # markup that was escaped as &lt;...&gt;
    if remove_urls:
        arr = pc.replace_substring_regex(arr, URL_RE, " ")
    arr = pc.replace_substring_regex(arr, r"\s+", " ")
    return pc.utf8_trim_whitespace(arr)


def clean_tags(arr: pa.Array, decode: bool, separator: str = ", ", max_tags: int | None = None) -> pa.Array:
    """Comma-separated tags -> cleaned tags joined by ``separator`` (empty tags dropped)."""
    lists = pc.split_pattern(arr, ",")
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    if decode:
        flat = url_decode(flat)
    flat = clean_text(flat)
    keep = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    flat, parents = flat.filter(pa.array(keep)), parents[keep]
    if max_tags is not None:
        first = np.searchsorted(parents, parents, side="left")  # parents are sorted
        rank = np.arange(len(parents)) - first
        flat, parents = flat.filter(pa.array(rank < max_tags)), parents[rank < max_tags]
    counts = np.bincount(parents, minlength=len(arr))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), separator)
    return pc.if_else(pc.is_null(arr), pa.scalar(None, pa.string()), joined)
