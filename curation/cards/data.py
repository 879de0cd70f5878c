"""What a dataset card reports, gathered from recorded stats and attribute tables (never recomputed).

The card joins the pool's sample rows with every attribute table under ``POOL/attributes/`` by
uid (DuckDB, out of core), marks which samples the subset kept, and reads the shard stats that
each stage wrote, so the card's funnel is exactly the pipeline's own numbers. The subset, the pool
and the results may be local paths or URLs (:mod:`curation.core.storage`); DuckDB reads local copies
of attribute tables on object storage (its ``httpfs`` extension is not there offline).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import numpy as np
import pandas as pd
from upath import UPath

from curation.core import storage
from curation.core.io import read_json
from curation.core.pool import Pool
from curation.core.stats import StageStats, merge
from curation.core.subset import Subset
from curation.core.uid import array_to_uids

SAMPLE_COLUMNS = (
    "uid",
    "caption",
    "source",
    "url",
    "original_width",
    "original_height",
    "sha256",
    "license",
    "LICENSE",
)
LICENSE_COLUMNS = ("license", "licence")


@dataclass
class CardData:
    name: str
    subset: Subset
    frame: pd.DataFrame  # one row per pool sample: attributes + ``in_subset``
    stages: list[StageStats] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    labels: pd.DataFrame | None = None
    file: str = ""  # the subset file's name, as written
    scorers: dict[str, dict[str, Any]] = field(default_factory=dict)  # score stage -> its model identity
    crawl: dict[str, Any] = field(default_factory=dict)  # where the pool's urls came from, as recorded

    @property
    def kept(self) -> pd.DataFrame:
        return self.frame[self.frame["in_subset"]]

    def score_columns(self) -> list[str]:
        return [c for c in self.frame.columns if "score" in c and pd.api.types.is_float_dtype(self.frame[c])]

    def reason_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c.endswith("_reason")]

    def source_counts(self) -> dict[str, int]:
        """Samples written per source, counting upsampled uids as many times as they are written."""
        if "source" not in self.frame.columns:
            return {"unknown": len(self.subset)}
        uids, counts = self.subset.counts()
        mult = pd.Series(counts, index=array_to_uids(uids))
        src = self.frame.set_index("uid")["source"]
        joined = pd.DataFrame({"n": mult}).join(src, how="left").fillna({"source": "not_in_pool"})
        return {str(k): int(v) for k, v in joined.groupby("source")["n"].sum().sort_index().items()}

    def duplicate_groups(self) -> dict[str, int]:
        out = {}
        for col in [c for c in self.frame.columns if c.endswith("dup_of")]:
            dups = self.frame[col].dropna()
            out[col] = int(dups.nunique())
        return out


def load_card_data(
    subset_path: Path,
    pool_dir: Path | None,
    results: Path | Sequence[Path] | None = None,
    name: str | None = None,
) -> CardData:
    subset_path = storage.location(subset_path)
    subset = Subset.load(subset_path)
    pool = Pool(pool_dir or storage.location(subset.manifest.get("pool", "")))
    frame = _sample_frame(pool)
    member = set(array_to_uids(np.unique(subset.uids)))
    frame["in_subset"] = frame["uid"].isin(member)
    labels_path = subset_path.parent / "labels.parquet"
    return CardData(
        name=name or subset.manifest.get("name") or subset_path.stem,
        subset=subset,
        frame=frame,
        stages=pool_stage_stats(pool),
        results=_read_results(results),
        labels=_read_frame(labels_path) if labels_path.exists() else None,
        file=subset_path.name,
        scorers=scorers(pool),
        crawl=crawl_origin(pool, frame),
    )


def scorers(pool: Pool) -> dict[str, dict[str, Any]]:
    """The model behind each score stage (``curate score`` pins it in ``attributes/STAGE/_model.json``)."""
    return {p.parent.name: read_json(p) for p in _files(pool.root / "attributes", "*/_model.json")}


def crawl_origin(pool: Pool, frame: pd.DataFrame) -> dict[str, Any]:
    """The crawl file(s) the download read, the url hosts, and any licence column, as recorded."""
    plan = pool.root / "_download" / "plan.json"
    parts = read_json(plan).get("parts", []) if plan.exists() else []
    hosts: Counter[str] = Counter()
    if "url" in frame:
        hosts.update(frame["url"].dropna().astype(str).map(lambda u: urlsplit(u).hostname or "?"))
    lic = next((c for c in frame.columns if c.lower() in LICENSE_COLUMNS), None)
    licenses = Counter(frame[lic].dropna().astype(str)) if lic else Counter()
    return {
        "files": [{"file": _basename(p["file"]), "rows": p.get("rows")} for p in parts if "file" in p],
        "hosts": hosts.most_common(3),
        "n_hosts": len(hosts),
        "licenses": licenses.most_common(3),
    }


def _sample_frame(pool: Pool) -> pd.DataFrame:
    con = duckdb.connect()
    base = pd.concat([pool.read_samples(s).to_pandas() for s in pool.shard_ids()], ignore_index=True)
    keep = [c for c in SAMPLE_COLUMNS if c in base.columns]
    frame = base[keep].drop_duplicates("uid")
    stages: dict[str, list[UPath]] = {}  # stage -> its tables, stages and tables in name order
    for f in _files(pool.root / "attributes", "*/*.parquet"):
        stages.setdefault(f.parent.name, []).append(f)
    for files in stages.values():
        with _local_names(files) as names:
            table = con.execute("SELECT * FROM read_parquet(?, union_by_name=true)", [names]).df()
        table = table.drop(columns=[c for c in table.columns if c.endswith("_emb")])
        new = [c for c in table.columns if c not in frame.columns or c == "uid"]
        frame = frame.merge(table[new].drop_duplicates("uid"), on="uid", how="left")
    return frame


def pool_stage_stats(pool: Pool) -> list[StageStats]:
    """Stage stats recorded under the pool (download first, then each attribute stage), merged."""
    stats_files = _files(pool.root, "_stats/*.json") + _files(pool.root, "attributes/*/_stats/*.json")
    stages: list[StageStats] = []
    for path in stats_files:
        data = read_json(path)
        stages += [StageStats.from_dict(d) for d in data.get("stages", [data] if "stage" in data else [])]
    return merge(stages)


def _read_results(paths: Path | Sequence[Path] | None) -> list[dict[str, Any]]:
    """Evaluator records (``results.jsonl``) of the models trained on this set; missing files add none."""
    files = [paths] if isinstance(paths, (str, Path, UPath)) else list(paths or [])
    locations = [storage.location(p) for p in files]
    return [
        json.loads(line)
        for path in locations
        if path.exists()
        for line in storage.read_text(path).splitlines()
        if line.strip()
    ]


def _files(root: Path, pattern: str) -> list[UPath]:
    """Files under ``root`` matching ``pattern``, in local path order (part by part) wherever they are."""
    base = len(storage.url(root).rstrip("/"))
    return sorted(storage.list_files(root, pattern), key=lambda p: storage.url(p)[base:].split("/"))


@contextlib.contextmanager
def _local_names(files: list[UPath]) -> Iterator[list[str]]:
    """File names DuckDB can open: the files themselves, or local copies of objects (one batch)."""
    if not files or not storage.is_remote(files[0]):
        yield [str(f) for f in files]
        return
    with tempfile.TemporaryDirectory(prefix="curation-card-") as tmp:
        names = [str(Path(tmp) / f"{i:06d}.parquet") for i in range(len(files))]
        with storage.storage_errors(files[0].parent, "read"):
            files[0].fs.get([f.path for f in files], names)
        yield names


def _read_frame(loc: Path) -> pd.DataFrame:
    if not storage.is_remote(loc):
        return pd.read_parquet(loc)
    return pd.read_parquet(io.BytesIO(storage.read_bytes(loc)))


def _basename(name: str) -> str:
    """The last part of a path or URL (a crawl recorded as ``s3://bucket/crawl.parquet``)."""
    return str(name).rstrip("/").rsplit("/", 1)[-1]


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]
    return next((label for bound, label in bounds if n < bound), "1B<n<10B")
