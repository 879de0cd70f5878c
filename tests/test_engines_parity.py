"""Local, Spark (local[2]) and Ray (2 CPUs) engines write identical outputs and equal stats.

Download (img2dataset's multiprocessing, pyspark and ray distributors against a 127.0.0.1 server)
and the DataComp-small-like job (basic filters, CLIP score with a tiny random model, exact top 30%,
reshard) run on each engine; one Spark session and one Ray instance serve the whole module.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation.core.config import CONF_DIR, build, load_config
from curation.core.io import read_json
from curation.core.stats import StageStats
from curation.core.subset import Subset
from curation.download import DownloadConfig, download_crawl
from curation.engines import Engine, get_engine
from curation.selection.steps import round_half_up
from tests.image_pool import write_image_pool
from tests.test_download import _url, server  # noqa: F401  (server: the 127.0.0.1 fixture)
from tests.test_engines import _bound_address
from tests.test_scoring import save_tiny_checkpoint
from workflows.jobfile import load_job, run_job_file

pytestmark = pytest.mark.slow

REMOTE = [pytest.param("spark", marks=pytest.mark.spark), pytest.param("ray", marks=pytest.mark.ray)]


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    """One engine of each kind for the module; cluster engines bound to 127.0.0.1 (see test_engines)."""
    made = {"local": get_engine("local", workers=1)}
    yield made  # type: ignore[misc]
    for eng in made.values():
        eng.close()


def engine(engines: dict[str, Engine], name: str) -> Engine:
    if name not in engines:
        engines[name] = get_engine(name, workers=2)
    return engines[name]


def timeless(stats: list[StageStats]) -> list[dict]:
    """Stats without the timing figures (``*seconds*``), which no two runs share."""
    out = []
    for s in stats:
        d = s.to_dict()
        d["extra"] = {k: v for k, v in d.get("extra", {}).items() if "seconds" not in k}
        out.append(d)
    return out


def tar_members(path: Path) -> dict[str, bytes]:
    """Member name -> bytes (tar headers carry write times, which differ between runs)."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def by_key(path: Path, key: str) -> pa.Table:
    table = pq.read_table(path)
    return table.sort_by(key)


# -- download ------------------------------------------------------------------------------------

KINDS = [("img", 14), ("png", 2), ("tiny", 2), ("404", 2), ("corrupt", 1), ("blocked", 2), ("invalid", 1)]
DOWNLOAD_SETTINGS = [
    "number_sample_per_shard=10",
    "url_policy.allow_hosts=[127.0.0.1]",
    "image.min_image_size=8",
    "downloader.processes_count=1",
    "downloader.thread_count=4",
    "downloader.timeout=20",
]


@pytest.fixture(scope="module")
def crawl(server, tmp_path_factory) -> Path:  # noqa: F811
    rows = [
        {"url": _url(server, kind, i), "text": f"a photo of {kind} {i}", "source": ["web", "forum"][i % 2]}
        for kind, count in KINDS
        for i in range(count)
    ]
    path = tmp_path_factory.mktemp("crawl") / "crawl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def local_download(crawl, engines, tmp_path_factory) -> tuple[Path, list[dict]]:
    pool = tmp_path_factory.mktemp("dl-local") / "pool"
    report = download_crawl(
        crawl, pool, load_config(DownloadConfig, None, DOWNLOAD_SETTINGS), engines["local"]
    )
    assert not report.failed
    return pool, timeless(report.stats)


@pytest.mark.parametrize("name", REMOTE)
def test_download_is_the_same_on_every_engine(name, crawl, engines, local_download, tmp_path):
    ref_pool, ref_stats = local_download
    pool = tmp_path / "pool"
    cfg = load_config(DownloadConfig, None, DOWNLOAD_SETTINGS)
    report = download_crawl(crawl, pool, cfg, engine(engines, name))
    assert not report.failed
    assert timeless(report.stats) == ref_stats
    shards = sorted(p.name for p in ref_pool.glob("*.parquet"))
    assert shards == sorted(p.name for p in pool.glob("*.parquet")) and len(shards) == 3
    for shard in shards:  # img2dataset writes rows and samples in the order downloads finish
        assert by_key(pool / shard, "key").equals(by_key(ref_pool / shard, "key"))
        tar = shard.replace(".parquet", ".tar")
        assert tar_members(pool / tar) == tar_members(ref_pool / tar)
    ours = pool / "attributes" / "download"
    for part in sorted((ref_pool / "attributes" / "download").glob("*.parquet")):
        assert by_key(ours / part.name, "uid").equals(by_key(part, "uid"))
    again = download_crawl(crawl, pool, cfg, engine(engines, name))  # a rerun fetches nothing
    assert {o.status for o in again.outcomes} == {"skipped"}
    assert _bound_address(engine(engines, name)) == "127.0.0.1"


# -- the DataComp-small-like job: filter, score, top-k, reshard --------------------------------------


@pytest.fixture(scope="module")
def image_pool(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("job")
    pool = write_image_pool(root / "pool", n_shards=3, per_shard=20, failed_every=7)
    return pool, save_tiny_checkpoint(root / "tiny.pt", seed=0)


def run_datacomp_small(image_pool: tuple[Path, Path], root: Path, eng: Engine) -> Path:
    pool, ckpt = image_pool
    shutil.copytree(pool, root / "pool")
    job = load_job(
        CONF_DIR / "pipelines" / "datacomp_small.yaml",
        [
            f"workdir={root}",
            "vars.filters=${conf}/filters/synthetic.yaml",
            "vars.model=tiny-vit",
            f"vars.pretrained={ckpt}",
            # one thread per model everywhere: float sums in another order would differ in the last bit
            *[
                f"steps.1.with.settings.{k}"
                for k in ("device=cpu", "threads=1", "loader_workers=0", "batch_size=7")
            ],
        ],
    )
    (root / "job.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json", by_alias=True)))
    runs = run_job_file(job, eng, skip=["card"])
    assert [r.status for r in runs] == ["done"] * 4 + ["left out"]
    return root


@pytest.fixture(scope="module")
def local_job(image_pool, engines, tmp_path_factory) -> Path:
    return run_datacomp_small(image_pool, tmp_path_factory.mktemp("job-local"), engines["local"])


def job_outputs(root: Path) -> dict[str, bytes]:
    """Every attribute table, the subset, its funnel and the training shards' samples and sizes."""
    out = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "pool" / "attributes").rglob("*.parquet"))
    }
    subset = root / "subsets" / "basic_clip30"
    out["subset"] = subset.with_suffix(".npy").read_bytes()
    out["funnel"] = subset.with_suffix(".stats.json").read_bytes()
    out["sizes"] = (root / "shards" / "sizes.json").read_bytes()
    for tar in sorted((root / "shards").glob("*.tar")):
        out.update({f"{tar.name}/{k}": v for k, v in tar_members(tar).items()})
    return out


def shard_stats(root: Path) -> dict[str, list[dict]]:
    stats = {}
    for path in sorted((root / "pool" / "attributes").glob("*/_stats/*.json")):
        stats[str(path.relative_to(root))] = timeless(
            [StageStats.from_dict(d) for d in read_json(path)["stages"]]
        )
    return stats


@pytest.mark.parametrize("name", REMOTE)
def test_filter_score_topk_and_reshard_are_identical_on_every_engine(
    name, image_pool, engines, local_job, tmp_path
):
    root = run_datacomp_small(image_pool, tmp_path, engine(engines, name))
    ours, ref = job_outputs(root), job_outputs(local_job)
    assert sorted(ours) == sorted(ref)
    assert len([k for k in ref if k.endswith(".parquet")]) >= 9  # filters, score, gathered columns
    assert [k for k in ours if ours[k] != ref[k]] == []
    assert shard_stats(root) == shard_stats(local_job)
    # the selection kept the exact top 30% of what the filters kept
    (decision,) = [d for d in _marker(root, "02-select")["summary"]["decisions"] if d["kind"] == "topk"]
    assert decision["cut"]["k"] == round_half_up(0.3 * decision["candidates"])

    # a worker died while scoring shard 00001: the rerun on this engine redoes that shard only
    scores = root / "pool" / "attributes" / "clip_score"
    untouched = {p: p.stat().st_mtime_ns for p in (scores / "00000.parquet", scores / "00002.parquet")}
    (scores / "00001.parquet").unlink()
    (scores / "_done" / "00001.done").unlink()
    (root / "_job" / "01-score.done.json").unlink()
    again = run_job_file(load_job(root / "job.yaml"), engine(engines, name), skip=["card"])
    assert [r.status for r in again] == ["skipped", "done", "skipped", "skipped", "left out"]
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert job_outputs(root) == ref

    # MetaCLIP balancing (entry counts summed across shards, hash-seeded draws): the same subset.
    # It writes its per-shard counts into the pool, so the local run gets a copy of the shared one.
    balanced = metaclip_balance(root / "pool", tmp_path / "balanced" / f"{name}.npy", engine(engines, name))
    local_pool = shutil.copytree(local_job / "pool", tmp_path / "local_pool")
    local = metaclip_balance(local_pool, tmp_path / "balanced" / "local.npy", engines["local"])
    assert balanced.read_bytes() == local.read_bytes()
    assert 0 < len(Subset.load(balanced)) < pq.read_metadata(root / "pool" / "00000.parquet").num_rows * 3


def metaclip_balance(pool: Path, out: Path, eng: Engine) -> Path:
    """The pool's captions ("a photo of a red circle") balanced over the default entries at t = 3."""
    from curation.core.stagedef import STAGES
    from curation.selection.run import SelectSpec
    from curation.selection.stage import SelectInputs

    spec = build(SelectSpec, {"name": "balanced", "steps": [{"metaclip_balance": {"t": 3, "seed": 0}}]})
    STAGES.get("select").run(SelectInputs(pool=pool, out=out), spec, eng)
    return out


def _marker(root: Path, name: str) -> dict:
    return read_json(root / "_job" / f"{name}.done.json")
