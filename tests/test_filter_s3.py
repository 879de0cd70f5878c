"""The filter stage with its pool on object storage (moto S3 on 127.0.0.1, memory://): the verdicts,
phase 1's lookups and the funnel are byte-identical to the same run on local disk; side inputs
(another stage's score and copy descriptors) are read through storage; phase 1 of the global
filters (exact, near and semantic dedup) is uploaded with its marker last and leaves no scratch;
an appended shard makes the filter redo exactly the shards a local run redoes.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core import storage
from curation.core.config import load_config
from curation.core.uid import compute_uid
from curation.engines import get_engine, run_job
from curation.filtering.embeddings import load_vectors
from curation.filtering.global_view import MARKER, run_prepare
from curation.filtering.job import FilterJob, FilterJobConfig
from curation.filtering.stage import PoolInputs, run_filter
from filters.near_dup import NearDupConfig, NearDupFilter
from tests.test_filters import CONF, N_SHARDS, SCORE, emb_list, write_pool

NAME = "demo_s3"


def filter_specs() -> list[dict]:
    """The demo's filters (caption, image size, language, exact and near dedup on the copy descriptor),
    plus the CLIP score threshold on the score stage's table and SemDeDup (a cluster pass on the engine)."""
    specs = load_config(FilterJobConfig, CONF / "demo.yaml").filters
    return [
        *specs,
        {"kind": "clip_score", "min_score": 0.2},
        {"kind": "semdedup", "k": 4, "cluster_groups": 3, "eps": [0.05, 0.2]},
    ]


def write_copydesc(root: Path) -> None:
    """The copydesc stage's table (``attributes/copydesc/NNNNN.parquet``: uid, a float16 descriptor and
    its reason column) made from the score table's embeddings; one sample per shard has none."""
    out = root / "attributes" / "copydesc"
    out.mkdir(parents=True)
    for path in sorted((root / "attributes" / SCORE).glob("*.parquet")):
        table = pq.read_table(path)
        vectors = np.array(table["image_emb"].to_pylist(), np.float32)
        ok = np.arange(len(vectors)) != 1
        reason = pa.array([None if k else "undecodable" for k in ok], pa.string())
        desc = emb_list(vectors)
        desc = pa.FixedSizeListArray.from_arrays(desc.values, vectors.shape[1], mask=pa.array(~ok))
        pq.write_table(
            pa.table({"uid": table["uid"], "copydesc": desc, "copydesc_reason": reason}), out / path.name
        )


@pytest.fixture
def local_pool(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    root.mkdir()
    write_pool(root)
    write_copydesc(root)
    return root


def files(loc: Path | str) -> dict[str, bytes]:
    """Every file under ``loc`` (local or URL) by relative path, with its bytes."""
    loc = storage.location(loc)
    if storage.is_remote(loc):
        found = loc.fs.find(loc.path)
        return {f[len(loc.path.rstrip("/")) + 1 :]: loc.fs.cat_file(f) for f in found}
    return {p.relative_to(loc).as_posix(): p.read_bytes() for p in Path(loc).rglob("*") if p.is_file()}


def assert_same_outputs(local: Path, remote: str) -> None:
    """Same files; every parquet (verdicts and phase-1 lookups) and stats file byte-identical."""
    here, there = files(local), files(remote)
    assert sorted(here) == sorted(there)
    parquets = [k for k in here if k.endswith(".parquet")]
    assert any(k.startswith("_prepared/") for k in parquets) and any("/" not in k for k in parquets)
    for key in parquets + [k for k in here if k.startswith("_stats/") or k.endswith(MARKER)]:
        assert here[key] == there[key], key


def funnel(report) -> list[dict]:
    return [s.to_dict() for s in report.stats]


def test_filter_stage_on_s3_equals_the_local_run(local_pool, s3):
    remote = f"{s3.url}/pool"
    storage.upload_dir(local_pool, remote)
    cfg = FilterJobConfig(name=NAME, filters=filter_specs())
    here = run_filter(PoolInputs(pool=local_pool), cfg, get_engine("local")).check("filter")
    there = run_filter(PoolInputs(pool=remote), cfg, get_engine("local")).check("filter")
    assert here.summary == there.summary
    assert funnel(here.reports[0]) == funnel(there.reports[0])
    reasons = {r for s in here.reports[0].stats for r in s.total.dropped}
    assert {
        "exact_duplicate",
        "near_duplicate",
        "low_clip_score",
        "missing_score",
        "wrong_language",
    } <= reasons
    assert_same_outputs(local_pool / "attributes" / NAME, f"{remote}/attributes/{NAME}")
    keys = s3.keys("pool/attributes")
    assert not [
        k for k in keys if "/_pending/" in k or "/.work-" in k or "_write_probe" in k or ".staging" in k
    ]
    assert f"pool/attributes/{NAME}/_prepared/semdedup/centroids.npy" in keys
    # a rerun reuses everything: every shard skipped, phase 1 not redone (its marker is untouched)
    marker = f"pool/attributes/{NAME}/_prepared/near_dup/{MARKER}"
    before = s3.fs().info(f"{s3.bucket}/{marker}")["LastModified"]
    again = run_job(FilterJob(remote, cfg.filters, NAME), "local")
    assert {o.status for o in again.outcomes} == {"skipped"}
    assert s3.fs().info(f"{s3.bucket}/{marker}")["LastModified"] == before
    # what a Spark/Ray/spawned worker gets: the job pickled, its locations still URLs
    job = pickle.loads(pickle.dumps(FilterJob(remote, cfg.filters, NAME)))
    assert storage.url(job.output_dir()) == f"{remote}/attributes/{NAME}"
    prepared = [storage.url(f.prepared_dir) for f in job.global_filters()]
    assert prepared and all(p.startswith(f"{remote}/attributes/{NAME}/_prepared/") for p in prepared)


def new_shard(root: Path, spare: Path) -> None:
    """Shard 00003 for ``root``, written under ``spare``: 20 new samples with their own hashes and
    scores, one of them an exact copy of a sample of shard 00000 that had no copy yet."""
    rows = pq.read_table(root / "00000.parquet").to_pylist()
    hashes = [
        r["sha256"] for s in range(N_SHARDS) for r in pq.read_table(root / f"{s:05d}.parquet").to_pylist()
    ]
    single = next(r["sha256"] for r in rows if r["sha256"] and hashes.count(r["sha256"]) == 1)
    new = []
    for i in range(20):
        url, caption = f"http://127.0.0.1/img/new/{i}.jpg", f"a new photo number {i}"
        sha = single if i == 0 else hashlib.sha256(url.encode()).hexdigest()
        new.append({**rows[0], "key": f"0003{i:04d}", "url": url, "caption": caption, "sha256": sha})
        new[-1]["uid"] = compute_uid(url, caption)
    (spare / "attributes" / SCORE).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(new), spare / "00003.parquet")
    scores = pa.table(
        {"uid": [r["uid"] for r in new], SCORE: pa.array(np.linspace(0.1, 0.4, 20), pa.float32())}
    )
    pq.write_table(scores, spare / "attributes" / SCORE / "00003.parquet")


def test_an_appended_shard_redoes_the_same_shards_on_s3(local_pool, tmp_path, s3):
    """Phase 1 again over the grown pool; the shard whose lookup changed gets a refresh record and
    loses its marker (storage.remove on s3), and its global verdicts are recomputed with the new
    lookup; the others are kept, as locally."""
    remote = f"{s3.url}/pool"
    storage.upload_dir(local_pool, remote)
    specs = [{"kind": "exact_dup"}, {"kind": "clip_score"}]
    for pool in (local_pool, remote):
        assert not run_job(FilterJob(pool, specs, NAME), "local").failed
    spare = tmp_path / "spare"
    new_shard(local_pool, spare)
    storage.upload_dir(spare, remote)
    storage.upload_dir(spare, local_pool)
    status = []
    for pool in (local_pool, remote):
        report = run_job(FilterJob(pool, specs, NAME), "local")
        assert not report.failed
        status.append({o.shard: o.status for o in report.outcomes})
    assert (
        status[0] == status[1] == {"00000": "done", "00001": "skipped", "00002": "skipped", "00003": "done"}
    )
    assert_same_outputs(local_pool / "attributes" / NAME, f"{remote}/attributes/{NAME}")


def test_phase_one_on_memory_is_published_with_its_marker_last(local_pool, tmp_path):
    """run_prepare on a URL: a changed config is refused, a failed phase 1 leaves no marker or scratch."""
    pool_url = "memory://filter-s3/pool"
    storage.upload_dir(local_pool, pool_url)
    from curation.core.pool import Pool

    pool = Pool(pool_url)
    out = storage.location(f"{pool_url}/attributes/x/_prepared/near_dup")
    f = NearDupFilter(NearDupConfig(kind="near_dup"))
    assert run_prepare(f, pool, out) == pool.shard_ids()
    assert f.shared_dir is None
    assert run_prepare(f, pool, out) == []  # reused
    local = tmp_path / "x"
    run_prepare(NearDupFilter(NearDupConfig(kind="near_dup")), Pool(local_pool), local)
    assert files(out) == files(local)
    with pytest.raises(Exception, match="different config"):
        run_prepare(NearDupFilter(NearDupConfig(kind="near_dup", threshold=0.5)), pool, out)

    class Broken(NearDupFilter):
        def prepare(self, pool, out):
            super().prepare(pool, out)
            raise RuntimeError("killed")

    other = storage.location(f"{pool_url}/attributes/y/_prepared/near_dup")
    with pytest.raises(RuntimeError, match="killed"):
        run_prepare(Broken(NearDupConfig(kind="near_dup")), pool, other)
    assert not storage.list_files(other.parent.parent, "**")
    storage.remove("memory://filter-s3", recursive=True)


def test_a_missing_side_input_on_a_url_names_it(local_pool):
    pool_url = "memory://filter-s3-missing/pool"
    storage.upload_dir(local_pool, pool_url)
    storage.remove(f"{pool_url}/attributes/{SCORE}/00001.parquet")
    report = run_job(FilterJob(pool_url, [{"kind": "clip_score"}], NAME), "local")
    failed = {o.shard: o.error for o in report.failed}
    assert list(failed) == ["00001"]
    assert f"{pool_url}/attributes/{SCORE}/00001.parquet" in failed["00001"]
    storage.remove("memory://filter-s3-missing", recursive=True)


def test_target_embeddings_and_side_inputs_at_urls(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(5, 4)).astype(np.float32)
    np.save(tmp_path / "t.npy", matrix)
    storage.write_bytes("memory://filter-s3-target/t.npy", storage.npy_bytes(matrix))
    np.testing.assert_array_equal(
        load_vectors("memory://filter-s3-target/t.npy"), load_vectors(tmp_path / "t.npy")
    )
    with pytest.raises(FileNotFoundError, match=r"memory://filter-s3-target/none\.npy"):
        load_vectors("memory://filter-s3-target/none.npy")
    from curation.core.stage import SideInput

    assert storage.is_remote(SideInput("memory://a/b", ("c",)).directory)
    assert not storage.is_remote(SideInput(tmp_path, ("c",)).directory)
    # the language filter's model at a URL: copied to a local file for fastText, same verdicts
    from filters.language import LanguageConfig, LanguageFilter, default_model_path

    storage.write_bytes("memory://filter-s3-target/lid.176.ftz", default_model_path().read_bytes())
    batch = pa.RecordBatch.from_pydict({"caption": ["a red car on the road", "une voiture rouge", None]})
    there = LanguageFilter(
        LanguageConfig(kind="language", model_path="memory://filter-s3-target/lid.176.ftz")
    )
    here = LanguageFilter(LanguageConfig(kind="language"))
    assert there.apply(batch).equals(here.apply(batch))
    with pytest.raises(FileNotFoundError, match="memory://filter-s3-target/none"):
        LanguageFilter(LanguageConfig(kind="language", model_path="memory://filter-s3-target/none")).setup()
    storage.remove("memory://filter-s3-target", recursive=True)
