"""A pool tar cut inside its third image, read by every stage that reads tars: each keeps every
intact sample, records ``truncated_tar`` for the lost ones only, and its funnel balances.

Stages that read pool tars: score (its loader), copydesc, reshard, dataset cards (examples), the
imagenet-captions builder (an image folder of tars). Filters and hardmatch read no tars (filters
read the attribute tables score and copydesc write; hardmatch reads captions from the parquet).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.builders.imagenet_captions import ImagenetCaptionsConfig, run_imagenet_captions
from curation.core.imagestore import locate_images
from curation.core.pool import Pool, iter_tar_samples
from curation.core.stats import Funnel
from curation.core.subset import Subset
from curation.engines import run_job
from curation.filtering.copydesc import CopyDescConfig
from curation.filtering.copydesc_job import CopyDescJob
from tests.image_pool import write_image_pool

PER_SHARD = 8
CUT_IN = 2  # the third sample's image is cut in half


def whole_samples(tar: Path) -> dict[str, dict[str, bytes]]:
    """Members by key, read with tarfile from the intact tar (the reference)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = t.extractfile(m).read()  # type: ignore[union-attr]
    return out


def cut_inside_image(tar: Path, sample: int) -> list[str]:
    """Cut ``tar`` in the middle of the image of its ``sample``-th sample; returns the keys in order."""
    with tarfile.open(tar) as t:
        members = t.getmembers()
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in members))
    image = next(m for m in members if m.name == f"{keys[sample]}.jpg")
    data = tar.read_bytes()
    tar.write_bytes(data[: image.offset_data + image.size // 2])
    return keys


@pytest.fixture
def torn(tmp_path: Path) -> tuple[Path, dict[str, dict[str, bytes]], list[str]]:
    """A 2-shard pool whose shard 00000 tar is cut inside its third image."""
    pool = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=PER_SHARD)
    intact = whole_samples(pool / "00000.tar")
    keys = cut_inside_image(pool / "00000.tar", CUT_IN)
    return pool, intact, keys


def _uid_of_key(pool: Path) -> dict[str, str]:
    rows = pq.read_table(pool / "00000.parquet", columns=["key", "uid"]).to_pylist()
    return {r["key"]: r["uid"] for r in rows}


def test_the_tar_reader_yields_every_whole_sample_before_the_damage(torn):
    pool, intact, keys = torn
    damage: list = []
    got = {s.key: s.files for s in iter_tar_samples(pool / "00000.tar", damage)}
    assert list(got) == keys[:CUT_IN]  # the cut sample is not yielded half
    assert all(got[k] == intact[k] for k in keys[:CUT_IN])  # byte for byte, every member
    assert damage and "past the end" in str(damage[0])


def test_copydesc_keeps_the_intact_samples_of_a_torn_tar(torn):
    pool, _, keys = torn
    report = run_job(CopyDescJob(pool, CopyDescConfig()), "local")
    assert not report.failed, report.failed
    Funnel(report.stats).check()
    (stage,) = report.stats
    assert stage.total.seen == 2 * PER_SHARD
    assert dict(stage.total.dropped) == {"truncated_tar": PER_SHARD - CUT_IN}
    table = Pool(pool).read_attributes("copydesc").to_pylist()
    reason = {r["uid"]: r["copydesc_reason"] for r in table}
    uid = _uid_of_key(pool)
    assert [reason[uid[k]] for k in keys] == [None] * CUT_IN + ["truncated_tar"] * (PER_SHARD - CUT_IN)


@pytest.mark.slow
def test_score_keeps_the_sample_just_before_the_damage(torn, tmp_path):
    from curation.scoring import ScoreConfig, score_pool
    from tests.test_scoring import save_tiny_checkpoint

    pool, _, keys = torn
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pt", seed=0)
    cfg = {
        "model": "tiny-vit",
        "pretrained": str(ckpt),
        "device": "cpu",
        "batch_size": 3,
        "loader_workers": 2,
    }
    report = score_pool(pool, ScoreConfig.model_validate(cfg))
    assert not report.failed, report.failed
    Funnel(report.stats).check()
    by_stage = {s.stage: s for s in report.stats}
    assert by_stage["score"].total.seen == 2 * PER_SHARD
    assert dict(by_stage["score"].total.dropped) == {"truncated_tar": PER_SHARD - CUT_IN}
    (column,) = [p.name for p in (pool / "attributes").iterdir()]
    rows = {r["uid"]: r for r in Pool(pool).read_attributes(column).to_pylist()}
    uid = _uid_of_key(pool)
    assert all(rows[uid[k]][f"{column}_reason"] is None for k in keys[:CUT_IN])  # intact: scored
    assert all(rows[uid[k]][column] is not None for k in keys[:CUT_IN])


def test_reshard_writes_every_intact_sample_and_counts_the_lost_as_truncated_tar(torn, tmp_path):
    from curation.reshard.run import run_reshard

    pool, intact, keys = torn
    p = Pool(pool)
    uids = [u for s in p.shard_ids() for u in p.read_samples(s)["uid"].to_pylist()]
    subset = Subset.from_hex(uids, {"name": "all"}).save(tmp_path / "all.npy")
    result = run_reshard(pool, subset, tmp_path / "out")
    assert result.complete
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["funnel"]["dropped"] == {"truncated_tar": PER_SHARD - CUT_IN}
    assert stats["total"] == len(uids) - (PER_SHARD - CUT_IN)
    written = {
        json.loads(s.files["json"])["uid"]: s.files
        for tar in sorted((tmp_path / "out").glob("*.tar"))
        for s in iter_tar_samples(tar)
    }
    uid = _uid_of_key(pool)
    for k in keys[:CUT_IN]:  # the intact samples of the torn tar, image bytes unchanged
        assert written[uid[k]]["jpg"] == intact[k]["jpg"]
    assert not any(uid[k] in written for k in keys[CUT_IN:])


def test_an_image_folder_with_a_torn_tar_lists_every_image_before_the_damage(torn):
    pool, _, keys = torn
    table = locate_images(pool)
    found = set(table["image_id"].to_pylist())
    assert set(keys[:CUT_IN]) <= found and not set(keys[CUT_IN:]) & found
    assert {f"00001{i:04d}" for i in range(PER_SHARD)} <= found  # the intact tar, whole


ABSENT = "not_in_any_tar"  # an index row whose image was never in the folder


def _captions_inputs(root: Path) -> tuple[Path, Path, list[str]]:
    """An ImageNet-Captions index over every key of the torn pool (image id = key), one absent image,
    and a metadata row (a title) for each."""
    ids = [f"{s:05d}{i:04d}" for s in range(2) for i in range(PER_SHARD)] + [ABSENT]
    root.mkdir()
    index = pa.table({"image_id": ids, "label": [0] * len(ids), "flickr_id": list(range(1, len(ids) + 1))})
    meta = pa.table(
        {
            "photo_id": list(range(1, len(ids) + 1)),
            "title": [f"Photo+{i}" for i in ids],
            "description": [None] * len(ids),
            "tags": [None] * len(ids),
        }
    )
    pq.write_table(index, root / "index.parquet")
    pq.write_table(meta, root / "meta.parquet")
    return root / "index.parquet", root / "meta.parquet", ids


def _build_captions(torn, tmp_path: Path) -> tuple[dict, dict[str, dict], list[str]]:
    pool, _, _ = torn
    index, meta, ids = _captions_inputs(tmp_path / "in")
    out = tmp_path / "captions"
    job, report = run_imagenet_captions(index, meta, pool, out, ImagenetCaptionsConfig(shard_size=5))
    assert not job.failed and report is not None
    Funnel.from_dict(report["funnel"]).check()
    assert report["index_rows"] == len(ids)
    rows = {r["image_id"]: r for r in pq.read_table(sorted(out.glob("[0-9]*.parquet"))).to_pylist()}
    assert len(rows) == len(ids)
    return report, rows, ids


def test_imagenet_captions_keeps_every_intact_image_of_a_torn_tar(torn, tmp_path):
    _, intact, keys = torn
    report, rows, ids = _build_captions(torn, tmp_path)
    lost = keys[CUT_IN:]
    status = {i: rows[i]["status"] for i in ids}
    assert {i: s for i, s in status.items() if s != "success"} == {
        **dict.fromkeys(lost, "truncated_tar"),  # after the damage: the tar's parquet lists them
        ABSENT: "missing_image",  # never in the folder: not blamed on the damage
    }
    assert report["not_joined_or_dropped"] == {"truncated_tar": len(lost), "missing_image": 1}
    assert report["samples"] == 2 * PER_SHARD - len(lost)
    (t,) = report["torn_tars"]
    assert t["tar"].endswith("00000.tar") and t["lost_images"] == len(lost)
    assert "torn tar" in (tmp_path / "captions" / "report.md").read_text()
    written = {
        json.loads(s.files["json"])["image_id"]: s.files["jpg"]
        for tar in sorted((tmp_path / "captions").glob("*.tar"))
        for s in iter_tar_samples(tar)
    }
    for k in keys[:CUT_IN]:  # the intact images before the damage, byte for byte
        assert written[k] == intact[k]["jpg"]
    assert set(written) == set(ids) - set(lost) - {ABSENT}


def test_imagenet_captions_without_a_listing_counts_every_image_not_found_as_truncated_tar(torn, tmp_path):
    """A torn tar with no parquet beside it: its lost ids are unknown, so an image not found may have
    been after the damage; every one is ``truncated_tar`` (the intact images are still all kept)."""
    pool, _, keys = torn
    (pool / "00000.parquet").unlink()
    report, rows, ids = _build_captions(torn, tmp_path)
    failed = {i: rows[i]["status"] for i in ids if rows[i]["status"] != "success"}
    assert failed == dict.fromkeys([*keys[CUT_IN:], ABSENT], "truncated_tar")
    assert report["torn_tars"][0]["lost_images"] is None
    assert report["samples"] == 2 * PER_SHARD - (PER_SHARD - CUT_IN)
