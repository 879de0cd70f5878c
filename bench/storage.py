"""What object storage costs a stage: the same stage on local disk and on S3 (moto on 127.0.0.1).

Writes a metadata pool (``--shards`` x ``--rows``: url, caption, source, sizes, sha256) to local
disk and to a bucket of a moto S3 server started here, then runs the ``filter`` stage (caption
length, language ID, exact dedup with its global view) on each, on the local engine. Prints the
seconds and rows/s of both, the S3 run's time as a multiple of the disk run's, and the HTTP
requests the S3 run made (in all and per shard, by method), counted at the server.

moto answers from memory on this machine, so the ratio is the client-side cost of object storage
(request latency, no rename, no mmap), a lower bound for a real store across a network.
Usage (from the repository root):
    python -m bench.storage --shards 8 --rows 20000
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import socket
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = [
    "red",
    "blue",
    "small",
    "large",
    "circle",
    "square",
    "star",
    "photo",
    "of",
    "a",
    "the",
    "with",
    "on",
    "near",
    "bright",
    "dog",
    "cat",
]


class RequestCounter(logging.Handler):
    """Counts the requests moto's server logs ('"GET /bucket/key HTTP/1.1" 200')."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for method in ("GET", "PUT", "HEAD", "DELETE", "POST"):
            if f'"{method} ' in text or f"m{method} " in text:
                self.counts[method] += 1
                return


def write_pool(root: Path, shards: int, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        caps = [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 6, 9]))) for _ in range(rows)]
        table = pa.table(
            {
                "key": [f"{s:05d}{i:05d}" for i in range(rows)],
                "url": [f"http://example.com/{s}/{i}.jpg" for i in range(rows)],
                "caption": caps,
                "status": ["success"] * rows,
                "source": [rng.choice(["photo", "forum"]) for _ in range(rows)],
                "width": [rng.randint(16, 512) for _ in range(rows)],
                "height": [rng.randint(16, 512) for _ in range(rows)],
                "sha256": [f"{rng.randrange(rows * shards // 2):064x}" for _ in range(rows)],
            }
        )
        pq.write_table(table, root / f"{s:05d}.parquet")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_filter(pool: str) -> float:
    from curation.core.stagedef import STAGES
    from curation.engines import open_engine

    stage = STAGES.get("filter")
    cfg = stage.load_config(
        None,
        {
            "name": "bench",
            "filters": [
                {"kind": "caption_length", "min_words": 3},
                {"kind": "language", "keep": ["en"], "min_score": 0.0},
                {"kind": "exact_dup"},
            ],
        },
    )
    with open_engine("local") as eng:
        start = time.perf_counter()
        stage.run(stage.make_inputs({"pool": pool}), cfg, eng).check("filter")
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=20000, help="rows per shard")
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    counter = RequestCounter()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(counter)
    werkzeug.propagate = False
    from curation.core import storage

    try:
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
            local = Path(tmp) / "pool"
            write_pool(local, args.shards, args.rows)
            import fsspec

            fsspec.filesystem("s3").mkdir("bench")
            storage.upload_dir(local, "s3://bench/pool")
            total = args.shards * args.rows
            disk = run_filter(str(local))
            counter.counts.clear()
            s3 = run_filter("s3://bench/pool")
            requests = dict(counter.counts)
    finally:
        server.stop()
    n_req = sum(requests.values())
    print(f"filter stage (caption length, language ID, exact dedup), {args.shards} shards x {args.rows} rows")
    print(f"  local disk : {disk:7.2f} s  {total / disk:10.0f} rows/s")
    print(f"  moto S3    : {s3:7.2f} s  {total / s3:10.0f} rows/s")
    print(f"  S3 / disk  : {s3 / disk:7.2f}x time")
    by_method = ", ".join(f"{m} {c}" for m, c in sorted(requests.items()))
    print(f"  S3 requests: {n_req} ({n_req / args.shards:.1f} per shard; {by_method})")


if __name__ == "__main__":
    main()
