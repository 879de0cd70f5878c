"""Captions normalised for whole-word matching, a batch at a time, as one string per batch.

Matching class names needs the same canonical text on both sides: case-folded, apostrophes and
their look-alikes dropped ("potter's", "potterʼs", "potter´s" -> "potters"), every other character
that is not a letter or a digit turned into a space, runs of spaces collapsed, and each caption
padded with one space so a name matches as ``" name "`` only at word boundaries. Doing this row by
row in Python is slow, and Arrow's regex replacement is slow too, so a batch is joined into one
string and normalised with a few C-level passes (``lower``, ``translate``, ``replace`` for runs of
spaces). Rows that are not ASCII (the minority of web captions) take Arrow's Unicode-aware path
first (NFKC, ``\\p{L}``/``\\p{N}``).

Rows are separated by ``SEP`` (NUL, removed from captions beforehand), so a position in the
string maps back to its row by a sorted search over the separator positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEP = "\x00"
# Apostrophes and the characters typed in their place: ASCII, grave, right/left single quotes,
# modifier letter apostrophe / turned comma (U+02BC/U+02BB: letters, so \p{L} would keep them),
# acute accent (U+00B4: NFKC turns it into a space + combining mark), prime, fullwidth apostrophe.
_APOSTROPHES = "'`\u2019\u2018\u201b\u02bc\u02bb\u00b4\u2032\uff07"
_ASCII_TABLE = str.maketrans(
    {
        **{chr(c): " " for c in range(128) if not chr(c).isalnum()},
        **{a: None for a in _APOSTROPHES if ord(a) < 128},
        SEP: SEP,
    }
)


@dataclass
class TextBlock:
    """Normalised rows joined as ``" row " SEP " row " SEP ...`` and which batch row each is."""

    text: str
    rows: np.ndarray  # batch row of each block row
    sep_positions: np.ndarray  # code-point index of each row's trailing SEP

    def row_of(self, positions: np.ndarray) -> np.ndarray:
        """Batch row of each code-point position in ``text``."""
        return self.rows[np.searchsorted(self.sep_positions, positions)]

    def empty_rows(self) -> np.ndarray:
        """Batch rows whose caption has no letter or digit at all."""
        starts = np.concatenate([[-1], self.sep_positions[:-1]])
        return self.rows[(self.sep_positions - starts - 1) <= 1]


def _strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], pa.string())
    arr = arr.cast(pa.string()).fill_null("")
    if pc.any(pc.match_substring(arr, SEP)).as_py():
        arr = pc.replace_substring(arr, SEP, " ")
    return arr


def _joined(arr: pa.Array) -> str:
    """`` row SEP`` for every row, as one Python string (one copy of Arrow's UTF-8 buffer)."""
    rows = pc.binary_join_element_wise(" ", arr, " " + SEP, "")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
    lo, hi = offsets[rows.offset], offsets[rows.offset + len(rows)]
    return rows.buffers()[2].to_pybytes()[lo:hi].decode("utf-8")


def _collapse_spaces(text: str) -> str:
    """Runs of spaces -> one space (a few ``str.replace`` passes beat a regex here by 3x)."""
    while "  " in text:
        text = text.replace("  ", " ")
    return text


def _ascii_block(arr: pa.Array) -> str:
    return _collapse_spaces(_joined(arr).lower().translate(_ASCII_TABLE))


def _unicode_block(arr: pa.Array) -> str:
    arr = pc.replace_substring_regex(arr, f"[{_APOSTROPHES}]", "")  # before NFKC, which splits U+00B4
    arr = pc.utf8_lower(pc.utf8_normalize(arr, "NFKC"))
    arr = pc.replace_substring_regex(arr, r"[^\p{L}\p{N}]", " ")
    return _collapse_spaces(_joined(arr).casefold())


def _sep_positions(text: str) -> np.ndarray:
    if text.isascii():
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    else:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.flatnonzero(codes == 0)


def normalized_blocks(captions: pa.Array | pa.ChunkedArray) -> list[TextBlock]:
    """A batch of captions as (at most) two normalised blocks: ASCII rows and the others."""
    arr = _strings(captions)
    if len(arr) == 0:
        return []
    is_ascii = pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
    blocks = []
    for mask, build in ((is_ascii, _ascii_block), (~is_ascii, _unicode_block)):
        rows = np.flatnonzero(mask)
        if len(rows):
            text = build(arr.take(pa.array(rows)) if len(rows) < len(arr) else arr)
            blocks.append(TextBlock(text, rows, _sep_positions(text)))
    return blocks


def normalize_phrases(phrases: list[str]) -> list[str]:
    """Phrases normalised exactly as captions are, without the padding: "Snow-Leopard" -> "snow leopard"."""
    out = [""] * len(phrases)
    for block in normalized_blocks(pa.array(phrases, pa.string())):
        for row, text in zip(block.rows, block.text.split(SEP)[: len(block.rows)], strict=True):
            out[row] = text.strip(" ")
    return out
