"""URL policy speed: the vectorised ``UrlPolicy.classify`` against checking urls one by one.

Prints urls/s of both on a crawl-like mix (99% ``https://cdn.example/...`` urls, 1% IP literals
with ports that take the exact path) and their ratio.
Usage (from the repository root): python -m bench.bench_urlpolicy [N]
"""

from __future__ import annotations

import random
import sys
import time

import pyarrow as pa

from curation.download.urlpolicy import UrlPolicy

HOSTS = ["i.pinimg.com", "cdn.shopify.com", "upload.wikimedia.org", "static.flickr.com", "img.example.co.uk"]


def crawl_urls(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    urls = [f"https://{rng.choice(HOSTS)}/p/{rng.getrandbits(64):x}/{i}.jpg?w=500" for i in range(n)]
    for i in range(0, n, 100):
        urls[i] = f"http://{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.7:8080/{i}.jpg"
    return urls


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    urls = crawl_urls(n)
    policy = UrlPolicy()
    start = time.perf_counter()
    reasons, _ = policy.classify(pa.array(urls, pa.string()))
    vectorised = n / (time.perf_counter() - start)
    sample = urls[: max(n // 10, 1)]
    start = time.perf_counter()
    verdicts = [policy.check(u) for u in sample]
    one_by_one = len(sample) / (time.perf_counter() - start)
    assert [v is None for v in verdicts] == [r is None for r in reasons.to_pylist()[: len(sample)]]
    print(f"urls: {n:,} ({n - reasons.null_count:,} blocked or invalid)")
    print(f"classify (vectorised): {vectorised:,.0f} urls/s")
    print(f"check (one by one):    {one_by_one:,.0f} urls/s")
    print(f"ratio: {vectorised / one_by_one:.1f}x")


if __name__ == "__main__":
    main()
