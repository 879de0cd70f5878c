"""Short drop reasons for img2dataset's failures, derived from its raw ``error_message``.

img2dataset records ``status`` (``success``, ``failed_to_download``, ``failed_to_resize``) and the
exception text of each failure. The funnel needs a handful of stable reasons, so each distinct
message is matched once against an ordered rule table (first match wins); the raw message stays
in the pool parquet and in the download attribute table. A message no rule knows falls back to
``download_error`` or ``resize_error`` by status, so a new kind of failure is still counted.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SUCCESS = "success"
NOT_RECORDED = "not_recorded"  # img2dataset wrote no row for the url (a per-sample crash)

FAILURE_RULES: tuple[tuple[str, str], ...] = (
    (r"^blocked redirect: ", "blocked_redirect"),  # curation.download.redirects: a hop the url policy refuses
    (r"^image_too_large: ", "image_too_large"),  # curation.download.decodeguard: refused from its header
    (r"^body_too_large: ", "body_too_large"),  # curation.download.redirects: over limits.max_body_bytes
    (r"^HTTP Error 404\b", "http_404"),
    (r"^HTTP Error 429\b", "rate_limited"),  # retried by --retry-failed after its Retry-After
    (r"^HTTP Error 4\d\d\b", "http_4xx"),
    (r"^HTTP Error 5\d\d\b", "http_5xx"),
    (r"^HTTP Error 3\d\d\b", "http_redirect"),  # redirect loops, redirects urllib refuses
    (r"^HTTP Error\b", "http_error"),
    (r"timed out|[Tt]imeout", "timeout"),
    (r"X-Robots-Tag", "opted_out"),
    (r"^hash mismatch$", "hash_mismatch"),
    (r"^image too small$", "too_small"),
    (r"^image area too large$", "too_large"),
    (r"^aspect ratio too large$", "bad_aspect_ratio"),
    (r"[Dd]ecod|cannot identify image|[Uu]nsupported image", "decode_error"),
    (r"IncompleteRead", "truncated"),
    (r"Name or service not known|name resolution|nodename nor servname|No address associated", "dns_error"),
    (
        r"Connection (refused|reset|aborted)|Remote end closed|RemoteDisconnected|Broken pipe",
        "connection_error",
    ),
    (r"SSL|CERTIFICATE", "ssl_error"),
    (r"[Uu]nknown url type|no host given|InvalidURL|control characters", "invalid_url"),
)
_COMPILED = tuple((re.compile(pattern), reason) for pattern, reason in FAILURE_RULES)
_SEP = "\x1f"  # joins status and message into one key
STATUS_FALLBACK = {
    "failed_to_download": "download_error",
    "failed_to_resize": "resize_error",
    NOT_RECORDED: NOT_RECORDED,
}


def failure_reason(status: str | None, message: str | None) -> str | None:
    """The drop reason of one (status, error_message) pair; None for a success."""
    if status == SUCCESS:
        return None
    for pattern, reason in _COMPILED:
        if message and pattern.search(message):
            return reason
    return STATUS_FALLBACK.get(str(status), f"status_{status}")


def failure_reasons(status: pa.Array | pa.ChunkedArray, message: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Reasons for a column of outcomes (null for successes), matching each distinct pair once."""
    key = pc.binary_join_element_wise(
        _flat(status).cast(pa.string()).fill_null(""), _flat(message).cast(pa.string()).fill_null(""), _SEP
    )
    encoded = pc.dictionary_encode(key)
    uniques = [k.split(_SEP, 1) for k in encoded.dictionary.to_pylist()]
    table = np.array([failure_reason(s or None, m or None) for s, m in uniques], dtype=object)
    return pa.array(table[encoded.indices.to_numpy(zero_copy_only=False)], pa.string())


def _flat(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
