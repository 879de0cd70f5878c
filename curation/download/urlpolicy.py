"""URL policy applied to a crawl before anything is downloaded.

A crawl is untrusted input: a url that points at ``127.0.0.1``, a private network or a cloud
metadata endpoint turns the downloader into a request forgery tool (SSRF). Every url therefore
gets a verdict before img2dataset sees it:

- ``invalid_url``: not a url urllib would fetch as written: empty, whitespace or control
  characters, no scheme or host, a bad port, credentials or a backslash in the authority (parsers
  disagree on those, which is how filters are bypassed), a malformed IP or host name.
- ``blocked_url``: a scheme other than http/https, or a host that is a loopback, private,
  link-local, shared, multicast, reserved or unspecified address (IPv4, IPv6, and IPv4 embedded in
  IPv6), a cloud metadata address or name, ``localhost`` and the special-use names
  (``*.localhost``, ``*.local``, ``*.internal``, ``*.home.arpa``), and single-label names (they
  resolve through local search domains, i.e. to intranet hosts).

IPv4 hosts are parsed the way ``inet_aton`` and browsers do (``2130706433``, ``0x7f.1``,
``0177.0.0.1``, ``127.1`` are all 127.0.0.1), percent-encoding in the host is decoded (urllib
does) and non-ASCII hosts are IDNA-normalised (fullwidth digits become ASCII ones), so an encoded
address cannot slip through. ``allow_hosts`` exempts exact names, addresses or networks (CIDR)
from the block rules (the local demo allows ``127.0.0.1``); it never makes an invalid url valid.

No DNS lookup happens here. A public name that resolves (or is rebound, or redirects) to a
private address is out of reach of a pre-download policy; block those at the network layer (an
egress proxy or firewall that denies private, link-local and metadata ranges after resolution).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BLOCKED_URL = "blocked_url"
INVALID_URL = "invalid_url"
ALLOWED_SCHEMES = frozenset({"http", "https"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
SPECIAL_USE_SUFFIXES = ("localhost", "local", "internal", "home.arpa")  # RFC 6761, 6762, 8375; ICANN
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")

_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_IPV4_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")

# Vectorised fast path: urls whose host is plainly a DNS name with an alphabetic last label (so not
# an IP address in any notation), no port, credentials, percent-encoding or trailing dot. They
# pass unless they end in a special-use or metadata name; everything else takes the exact path.
_LABEL = r"[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?"
_FAST_OK = (
    rf"^[hH][tT][tT][pP][sS]?://({_LABEL}\.)+[a-zA-Z]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"([/?#][^\x00-\x20\x7f]*)?$"
)
_FAST_SPECIAL = (  # (?i): case-insensitive
    r"(?i)^[a-z]+://([^/?#]*\.)?(localhost|local|internal|home\.arpa|metadata\.goog)([/?#]|$)"
)

Verdict = tuple[str, str] | None  # (reason, detail) or None when the url may be fetched


class UrlPolicy:
    """Decides, without network access, whether a url may be fetched."""

    def __init__(self, allow_hosts: Iterable[str] = ()) -> None:
        self.allow_names: set[str] = set()
        self.allow_networks: list[IPNetwork] = []
        for entry in allow_hosts:
            self._add_allowed(entry)

    def _add_allowed(self, entry: str) -> None:
        text = entry.strip().lower().rstrip(".").strip("[]")
        try:
            self.allow_networks.append(ipaddress.ip_network(text, strict=False))
            return
        except ValueError:
            pass
        address = parse_ipv4(text) if _ends_in_number(text) else None
        if address is not None:
            self.allow_networks.append(ipaddress.ip_network(address))
        elif text and all(_HOST_LABEL.match(label) for label in text.split(".")):
            self.allow_names.add(text)
        else:
            raise ValueError(f"allow_hosts: {entry!r} is not a host name, IP address or network")

    def check(self, url: object) -> Verdict:
        """``None`` if ``url`` may be fetched, else ``(reason, detail)``."""
        host_or_verdict = _parse_host(url)
        if isinstance(host_or_verdict, tuple):
            return host_or_verdict
        host = host_or_verdict
        if isinstance(host, str):
            if host in self.allow_names:
                return None
            problem = _name_problem(host)
        else:
            if any(host in net for net in self.allow_networks if net.version == host.version):
                return None
            problem = address_problem(host)
        return (BLOCKED_URL, f"{problem}: {host}") if problem else None

    def classify(self, urls: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
        """Reasons (null where allowed) and details for a column of urls.

        Plain ``http(s)://name.tld/...`` urls are cleared by two vectorised regexes; only the rest
        (IP literals, ports, odd encodings) go through :meth:`check` one by one.
        """
        urls = urls.combine_chunks() if isinstance(urls, pa.ChunkedArray) else urls
        n = len(urls)
        if not pa.types.is_string(urls.type) and not pa.types.is_large_string(urls.type):
            raise TypeError(f"urls must be strings, got {urls.type}")
        fast = pc.and_kleene(
            pc.match_substring_regex(urls, _FAST_OK),
            pc.invert(pc.match_substring_regex(urls, _FAST_SPECIAL)),
        )
        fast_np = fast.fill_null(False).to_numpy(zero_copy_only=False)
        reasons = np.full(n, None, dtype=object)
        details = np.full(n, None, dtype=object)
        slow = np.flatnonzero(~fast_np)
        for i, url in zip(slow, urls.take(pa.array(slow, pa.int64())).to_pylist(), strict=True):
            verdict = self.check(url)
            if verdict is not None:
                reasons[i], details[i] = verdict
        return pa.array(reasons, pa.string()), pa.array(details, pa.string())


def _parse_host(url: object) -> str | IPAddress | tuple[str, str]:
    """The host urllib would connect to (a normalised name or an address), or an invalid verdict."""
    if not isinstance(url, str) or not url:
        return INVALID_URL, "empty url"
    if _BAD_CHARS.search(url):
        return INVALID_URL, "whitespace or control character in url"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        return INVALID_URL, f"unparsable url: {exc}"
    scheme = parts.scheme.lower()
    if scheme and scheme not in ALLOWED_SCHEMES:
        return BLOCKED_URL, f"scheme {scheme!r} is not http or https"
    if not scheme or not parts.netloc:
        return INVALID_URL, "no scheme or host"
    if "@" in parts.netloc or "\\" in parts.netloc:
        return INVALID_URL, "credentials or backslash in the authority"
    raw = unquote(parts.hostname or "")  # urllib percent-decodes the host before connecting
    if parts.netloc.startswith("["):
        try:
            return ipaddress.IPv6Address(raw)
        except ValueError:
            return INVALID_URL, f"malformed IPv6 address {raw!r}"
    try:
        host = raw.encode("idna").decode("ascii").lower() if not raw.isascii() else raw.lower()
    except UnicodeError:
        return INVALID_URL, f"host {raw!r} is not a valid international domain name"
    host = host[:-1] if host.endswith(".") else host
    if _ends_in_number(host):
        address = parse_ipv4(host)
        return address if address is not None else (INVALID_URL, f"malformed IPv4 address {raw!r}")
    if not host or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        return INVALID_URL, f"malformed host name {raw!r}"
    return host


def _ends_in_number(host: str) -> bool:
    """WHATWG rule: a host whose last label is a number is an IPv4 address (or invalid)."""
    last = host.rsplit(".", 1)[-1]
    return bool(last) and _IPV4_PART.match(last) is not None


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse decimal, octal (leading 0) and hex (0x) parts, 1 to 4 of them, as ``inet_aton`` does."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.match(p) for p in parts):
        return None
    values = [_ipv4_number(p) for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _ipv4_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if set(part) <= set("01234567") else 1 << 40  # 1<<40: never valid
    return int(part)


def address_problem(ip: IPAddress) -> str | None:
    """Why an address must not be fetched (None if it is a public unicast address)."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    inner = address_problem(embedded) if embedded is not None else None
    if inner:
        return f"{inner} {embedded} embedded in IPv6"
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("special-purpose (not global)", not ip.is_global),
    )
    return next((f"{name} address" for name, hit in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo server, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[0]
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _name_problem(host: str) -> str | None:
    if host in METADATA_NAMES:
        return "cloud metadata host"
    if any(host == s or host.endswith("." + s) for s in SPECIAL_USE_SUFFIXES):
        return "special-use host name"
    if "." not in host:
        return "single-label host name"
    return None
