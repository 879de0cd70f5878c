"""Cleaning Flickr / YFCC100M text fields into caption text, a column at a time.

YFCC100M stores title, description and tags URL-encoded the way HTML forms are: a space is ``+``,
other bytes are ``%XX`` (``Reflected+Duck``, ``caf%C3%A9``); tags are comma-separated, each one
encoded (``lake,new+york``). Decoding is ``urllib.parse.unquote_plus`` semantics: ``+`` becomes a
space first, then ``%XX`` escapes are decoded, so an encoded plus (``%2B``) stays a plus. (SLIP's
YFCC15M script does ``unquote(x).replace('+', ' ')``, which turns a real ``%2B`` into a space.)
The decoded text still holds what Flickr users typed: HTML markup (``<a href=...>``, ``<br />``)
and entities (``&amp;``, ``&quot;``, ``&nbsp;``), sometimes escaped markup (``&lt;b&gt;``).

Markup is removed by the standard library's HTML tokenizer (:class:`html.parser.HTMLParser`, the
WHATWG-style tokenizer CPython ships; no new dependency), not by a regex over ``<...>``: text that
only looks like markup ("I <3 my dog", ">_<", "a < b > c") is not a tag to it and stays. Inline
elements (``<b>``, ``<a>``, ...) vanish without a trace ("<b>lake</b>!" -> "lake!"); block elements
and line breaks become a space; ``<script>``/``<style>`` content goes. Escaped markup
(``&lt;b&gt;``) is tokenized a second time after unescaping, where only known HTML element names
count as tags, so an escaped "&lt;3" or "&lt;cats&gt;" stays text. Every Unicode space
(``&nbsp;``, U+2009, U+3000, ...) becomes an ASCII space, zero-width spaces go, runs collapse, and
apostrophe look-alikes between letters (U+2019, U+02BC, U+00B4, ...) become ``'``.

Most steps are Arrow compute kernels; the ones with no kernel (``%XX`` decoding, HTML) run in
Python only on the rows that contain ``%``, ``<`` or ``&``.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# Elements that render inline: removing their tags must not split a word ("<b>lake</b>!" -> "lake!").
INLINE_ELEMENTS = frozenset(
    {
        "a", "abbr", "acronym", "b", "bdi", "bdo", "big", "cite", "code", "data", "del", "dfn", "em",
        "font", "i", "ins", "kbd", "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
        "sup", "time", "tt", "u", "var", "wbr",
    }
)  # fmt: skip
DROPPED_CONTENT = frozenset({"script", "style"})  # their text is code, not caption
BLOCK_ELEMENTS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "caption", "center", "dd", "div", "dl", "dt",
        "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "img",
        "li", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
        "ul",
    }
)  # fmt: skip
# Names that count as tags in escaped markup (the second pass): HTML elements Flickr users write.
KNOWN_ELEMENTS = INLINE_ELEMENTS | BLOCK_ELEMENTS | DROPPED_CONTENT
# Unicode spaces RE2's \s misses (it is ASCII-only): every Z* character, NEL, and the C0 controls.
SPACE_RE = r"[\s\p{Z}\x{85}\x{0}-\x{1F}\x{7F}]+"
ZERO_WIDTH_RE = r"[\x{200B}\x{2060}\x{FEFF}]"
APOSTROPHES = "\u2019\u2018\u02bc\u02bb\u00b4\u2032\uff07\u201b`"  # written where "'" is meant
APOSTROPHE_RE = f"(\\pL)[{APOSTROPHES}](\\pL)"


class _TextExtractor(HTMLParser):
    """The text an HTML fragment shows: tags removed, entities unescaped (or kept as written)."""

    def __init__(self, unescape: bool, known_only: bool) -> None:
        super().__init__(convert_charrefs=unescape)
        self.known_only = known_only
        self.parts: list[str] = []
        self.skip = 0  # inside <script>/<style>

    def _tag(self, tag: str, text: str, opening: bool | None) -> None:
        if self.known_only and tag not in KNOWN_ELEMENTS:
            self.handle_data(text)  # not markup: keep it as typed
            return
        if tag in DROPPED_CONTENT and opening is not None:
            self.skip = max(0, self.skip + (1 if opening else -1))
        if tag not in INLINE_ELEMENTS:
            self.parts.append(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, self.get_starttag_text() or "", True)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, self.get_starttag_text() or "", None)

    def handle_endtag(self, tag: str) -> None:
        self._tag(tag, f"</{tag}>", False)

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)

    def handle_entityref(self, name: str) -> None:  # only called with convert_charrefs=False
        self.handle_data(f"&{name}")

    def handle_charref(self, name: str) -> None:
        self.handle_data(f"&#{name}")

    def handle_comment(self, data: str) -> None:
        if self.known_only:
            self.handle_data(f"<!--{data}-->")


def _extract(text: str, unescape: bool, known_only: bool) -> str:
    parser = _TextExtractor(unescape, known_only)
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def strip_html(text: str) -> str:
    """The text of an HTML fragment; escaped markup (``&lt;b&gt;``) is removed too, look-alikes stay."""
    text = _extract(text, unescape=True, known_only=False)
    return _extract(text, unescape=False, known_only=True) if "<" in text else text


def clean_text(arr: pa.Array, remove_urls: bool = False) -> pa.Array:
    """Strip markup, unescape entities, strip escaped markup, normalise spaces; nulls stay null."""
    arr = _map_where(arr, pc.match_substring_regex(arr, "[<&]"), strip_html)
    if remove_urls:
        arr = pc.replace_substring_regex(arr, URL_RE, " ")
    arr = pc.replace_substring_regex(arr, ZERO_WIDTH_RE, "")
    arr = pc.replace_substring_regex(arr, APOSTROPHE_RE, "\\1'\\2")
    arr = pc.replace_substring_regex(arr, SPACE_RE, " ")
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
