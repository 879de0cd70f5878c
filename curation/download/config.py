"""Settings of ``curate download``: how to read the crawl, which urls to fetch, how img2dataset runs.

Only ``downloader`` settings may change between runs into the same pool (they change how fast and
how patiently urls are fetched, not how the pool is laid out or what an image looks like);
everything else is part of the pool's fingerprint (see :mod:`curation.download.plan`), so a rerun
with other columns, url policy, shard size or image settings is refused instead of mixing pools.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from curation.core.config import ConfigModel
from curation.download.urlpolicy import UrlPolicy

# Column names img2dataset writes itself; a carried crawl column may not shadow them.
IMG2DATASET_COLUMNS = frozenset(
    {"key", "caption", "url", "width", "height", "original_width", "original_height", "status",
     "error_message", "exif", "md5", "sha256", "sha512", "uid", "source", "final_url"}
)  # fmt: skip


class CrawlColumns(ConfigModel):
    """Where the crawl keeps each field; the pool always calls them url, caption, uid and source."""

    url: str = "url"
    caption: str | None = Field(None, description="None: 'caption' if present, else 'text'.")
    uid: str = Field("uid", description="Optional in the data: missing or null uids are derived.")
    source: str = Field("source", description="Optional in the data: else default_source.")
    default_source: str = "unknown"
    carry: list[str] = Field(
        default_factory=list, description="Further crawl columns copied into the pool parquet."
    )

    bbox: str | None = Field(
        None, description="Boxes to blur (img2dataset's bbox_col), e.g. DataComp's face_bboxes."
    )

    @field_validator("carry")
    @classmethod
    def _not_reserved(cls, value: list[str]) -> list[str]:
        clash = sorted(set(value) & IMG2DATASET_COLUMNS)
        if clash:
            raise ValueError(f"cannot carry {clash}: the pool writes these columns itself")
        return value

    def extra_columns(self) -> list[str]:
        """Crawl columns copied as they are into the pool (img2dataset appends ``bbox`` itself)."""
        return [*self.carry, *([self.bbox] if self.bbox and self.bbox not in self.carry else [])]


class UrlPolicyConfig(ConfigModel):
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Names, addresses or CIDR networks exempt from the block rules (e.g. 127.0.0.1).",
    )
    expect_all_blocked: bool = Field(
        False, description="A crawl with no url to fetch is then not an error (not part of the fingerprint)."
    )

    @field_validator("allow_hosts")
    @classmethod
    def _parsable(cls, value: list[str]) -> list[str]:
        UrlPolicy(value)  # raises ValueError naming a bad entry
        return value


class ImageConfig(ConfigModel):
    """img2dataset's resize and encode options (the same names), and its size/aspect limits."""

    image_size: int = Field(512, gt=0)
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"] = (
        "keep_ratio_largest"
    )
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    skip_reencode: bool = True
    min_image_size: int = Field(0, ge=0)
    max_image_area: float = Field(math.inf, gt=0)
    max_aspect_ratio: float = Field(math.inf, gt=0)
    extract_exif: bool = False


class LimitsConfig(ConfigModel):
    """What one url may cost a download worker; checked before the body is read or decoded."""

    max_image_pixels: int = Field(
        89_478_485, gt=0, description="Width x height from the header; PIL's own bomb limit, as scoring."
    )
    max_decoded_bytes: int = Field(
        1 << 30, gt=0, description="Memory the decode would take (alpha images cost ~60 bytes/pixel)."
    )
    max_body_bytes: int = Field(64 << 20, gt=0, description="Larger responses are refused unread.")


class DownloaderConfig(ConfigModel):
    """How img2dataset fetches: parallelism, patience, shard size, politeness."""

    distributor: Literal["multiprocessing", "pyspark", "ray"] = Field(
        "multiprocessing", description="Set by --engine (local, spark, ray); no need to set it here."
    )
    processes_count: int = Field(2, ge=1)
    thread_count: int = Field(64, ge=1)
    timeout: int = Field(10, ge=1)
    retries: int = Field(0, ge=0)
    max_shard_retry: int = Field(1, ge=0)
    user_agent_token: str = Field(
        "curation-bot",
        pattern=r"^[A-Za-z_-]+$",
        description="Product token: named in the User-Agent and matched against robots.txt groups.",
    )
    contact_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s;()]+$",
        description="A page of yours saying who crawls and how to opt out; sent in every User-Agent.",
    )
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that opt an image out (img2dataset's default).",
    )
    output: Literal["file", "terminal"] = Field(
        "file", description="img2dataset's own prints: to POOL/_download/img2dataset.log, or as they come."
    )

    def agent_token(self) -> str:
        """img2dataset's ``user_agent_token``: it sends ``(compatible; <this>; +<its repo>)``."""
        return f"{self.user_agent_token}; +{self.contact_url}" if self.contact_url else self.user_agent_token


class RobotsConfig(ConfigModel):
    """robots.txt before fetch (RFC 9309), per scheme + host + port; see docs/download.md."""

    enabled: bool = True
    on_unavailable: Literal["disallow", "allow"] = Field(
        "disallow", description="robots.txt answered 5xx or 429, or was unreachable: RFC 9309 says disallow."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds per robots.txt request.")
    max_redirects: int = Field(5, ge=0, description="Redirect hops followed (RFC 9309: at least 5).")
    max_bytes: int = Field(
        512_000, ge=1024, description="robots.txt bytes read (RFC 9309: at least 500 KiB)."
    )
    max_age_s: float = Field(
        86_400, gt=0, description="A cached robots.txt older than this is fetched again (RFC 9309: 24 h)."
    )
    threads: int = Field(16, ge=1, description="robots.txt files fetched at once (one per host).")


class RetryConfig(ConfigModel):
    """``curate download --retry-failed POOL``: which last reasons are worth another attempt."""

    reasons: list[str] = Field(
        default_factory=lambda: ["timeout", "connection_error", "http_5xx", "rate_limited"],
        description="Drop reasons that are retried (add robots_unavailable to re-ask robots.txt).",
    )
    max_attempts: int = Field(3, ge=1, description="Attempts per row, the first download included.")
    retry_after_s: float = Field(
        60.0, ge=0, description="Wait after a 429 that named no Retry-After, counted from its shard's end."
    )
    max_wait_s: float = Field(600.0, ge=0, description="Longest wait for any Retry-After before a pass.")


class DownloadConfig(ConfigModel):
    number_sample_per_shard: int = Field(10_000, ge=10, description="Input urls per pool shard.")
    columns: CrawlColumns = Field(default_factory=CrawlColumns)
    url_policy: UrlPolicyConfig = Field(default_factory=UrlPolicyConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    downloader: DownloaderConfig = Field(default_factory=DownloaderConfig)
    robots: RobotsConfig = Field(default_factory=RobotsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _blurring_needs_reencoding(self) -> DownloadConfig:
        # img2dataset blurs the decoded image but, with skip_reencode, stores the original bytes of a
        # jpg that needs no resize: the boxes would silently stay unblurred.
        if self.columns.bbox and self.image.skip_reencode:
            raise ValueError("columns.bbox (blurring) needs image.skip_reencode=false")
        return self

    @model_validator(mode="after")
    def _png_compression(self) -> DownloadConfig:
        # img2dataset reads encode_quality as the PNG compression level (0-9) and raises otherwise
        if self.image.encode_format == "png" and not 0 <= self.image.encode_quality <= 9:
            raise ValueError(
                f"image.encode_quality is {self.image.encode_quality}, but with image.encode_format=png "
                "it is the PNG compression level, 0 to 9 (e.g. --set image.encode_quality=6)"
            )
        return self
