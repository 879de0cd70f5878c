"""curate reshard: round trip, upsampling, labels, resume, missing uids, open_clip_train and webdataset."""

from __future__ import annotations

import io
import json
import tarfile
from argparse import Namespace
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from typer.testing import CliRunner

from curation.core.pool import Pool, iter_tar_samples
from curation.core.subset import Subset
from curation.core.uid import compute_uid
from curation.reshard.run import ReshardConfig, ReshardError, WriteJob, run_reshard
from pipelines.app import app
from tests.selpools import write_image_pool


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_image_pool(tmp_path / "pool", n_shards=3, per_shard=40)


def pool_samples(pool: Path) -> dict[str, dict]:
    p = Pool(pool)
    out = {}
    for shard in p.shard_ids():
        for s in p.iter_tar(shard):
            meta = s.meta()
            out[compute_uid(meta["url"], meta["caption"])] = {"shard": shard, **s.__dict__}
    return out


def read_out(out: Path) -> list[dict]:
    """Every sample of the output tars, in shard order."""
    return [
        {"tar": tar.name, "key": s.key, "files": s.files, "meta": s.meta()}
        for tar in sorted(out.glob("*.tar"))
        for s in iter_tar_samples(tar)
    ]


def make_subset(uids: list[str], path: Path) -> Path:
    return Subset.from_hex(uids, {"name": "test-subset"}).save(path)


def test_round_trip_writes_every_uid_as_often_as_listed(pool, tmp_path):
    samples = pool_samples(pool)
    uids = sorted(samples)[::2]
    listed = uids + uids[:5] + uids[:2]  # 5 uids twice, 2 of them three times
    subset = make_subset(listed, tmp_path / "s.npy")
    out = tmp_path / "out"
    result = run_reshard(pool, subset, out, ReshardConfig(shard_size=7))
    assert result.complete
    written = read_out(out)
    assert Counter(s["meta"]["uid"] for s in written) == Counter(listed)
    assert len({s["key"] for s in written}) == len(written)  # distinct keys, also for copies
    for s in written:
        src = samples[s["meta"]["uid"]]
        assert s["files"]["jpg"] == src["files"]["jpg"] and s["files"]["txt"] == src["files"]["txt"]
        assert s["meta"]["source"] and s["meta"]["key"] == s["key"]
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == dict(Counter(s["tar"] for s in written))
    assert max(sizes.values()) == 7 and len(sizes) == -(-len(listed) // 7)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["total"] == len(listed) and sum(stats["by_source"].values()) == len(listed)
    assert stats["upsampled_uids"] == 5 and stats["subset_manifest"]["name"] == "test-subset"


def test_uids_missing_from_the_pool_are_counted_not_fatal(pool, tmp_path, caplog):
    uids = sorted(pool_samples(pool))[:10]
    ghosts = [compute_uid(f"http://nowhere/{i}", "x") for i in range(3)]
    subset = make_subset(uids + ghosts + ghosts[:1], tmp_path / "s.npy")
    result = run_reshard(pool, subset, tmp_path / "out")
    assert result.complete
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["total"] == 10
    assert stats["missing_in_pool"]["uids"] == 3 and stats["missing_in_pool"]["copies"] == 4
    assert stats["funnel"]["dropped"] == {"missing_in_pool": 4} and stats["funnel"]["seen"] == 14
    assert "not in the pool" in caplog.text


def test_shuffle_is_seeded_and_keeps_the_multiset(pool, tmp_path):
    uids = sorted(pool_samples(pool))
    subset = make_subset(uids + uids[:10], tmp_path / "s.npy")
    orders = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        run_reshard(pool, subset, tmp_path / name, ReshardConfig(shard_size=16, shuffle=True, seed=seed))
        orders[name] = [s["meta"]["uid"] for s in read_out(tmp_path / name)]
    assert orders["a"] == orders["b"] != orders["c"]
    assert Counter(orders["a"]) == Counter(uids + uids[:10])
    plain = make_subset(uids, tmp_path / "p.npy")
    run_reshard(pool, plain, tmp_path / "plain", ReshardConfig(shard_size=16))
    assert [s["meta"]["uid"] for s in read_out(tmp_path / "plain")] != sorted(orders["a"])


def test_labels_become_cls_members_and_unlabelled_samples_are_counted(pool, tmp_path):
    uids = sorted(pool_samples(pool))[:20]
    table = pa.table({"uid": uids[:15], "label": list(range(15))})
    pq.write_table(table, tmp_path / "labels.parquet")
    subset = make_subset(uids, tmp_path / "s.npy")
    run_reshard(pool, subset, tmp_path / "out", labels=tmp_path / "labels.parquet")
    written = read_out(tmp_path / "out")
    assert {s["meta"]["uid"]: int(s["files"]["cls"]) for s in written} == dict(
        zip(uids[:15], range(15), strict=True)
    )
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["funnel"]["dropped"] == {"missing_label": 5}


def test_resume_writes_only_missing_shards_and_gives_identical_output(pool, tmp_path, monkeypatch):
    subset = make_subset(sorted(pool_samples(pool))[:30], tmp_path / "s.npy")
    out = tmp_path / "out"
    original = WriteJob.run_shard

    def crash_on_shard_2(self, shard, staging):
        if shard == "00002":
            raise RuntimeError("simulated crash")
        return original(self, shard, staging)

    monkeypatch.setattr(WriteJob, "run_shard", crash_on_shard_2)
    first = run_reshard(pool, subset, out, ReshardConfig(shard_size=8))
    assert not first.complete and not (out / "sizes.json").exists()
    assert not (out / "00002.tar").exists() and (out / "00001.tar").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    monkeypatch.setattr(WriteJob, "run_shard", original)
    second = run_reshard(pool, subset, out, ReshardConfig(shard_size=8))
    assert second.complete
    outcomes = {o.shard: o.status for o in second.reports[0].outcomes}
    assert outcomes["00002"] == "done" and outcomes["00000"] == "skipped"
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    fresh = tmp_path / "fresh"
    run_reshard(pool, subset, fresh, ReshardConfig(shard_size=8))
    for tar in sorted(fresh.glob("*.tar")):
        assert tar.read_bytes() == (out / tar.name).read_bytes()


def test_a_different_request_into_the_same_directory_is_refused(pool, tmp_path):
    uids = sorted(pool_samples(pool))
    out = tmp_path / "out"
    run_reshard(pool, make_subset(uids[:10], tmp_path / "a.npy"), out)
    with pytest.raises(ReshardError, match="another subset"):
        run_reshard(pool, make_subset(uids[:12], tmp_path / "b.npy"), out)
    run_reshard(pool, tmp_path / "b.npy", out, overwrite=True)
    assert json.loads((out / "stats.json").read_text())["total"] == 12


def test_metadata_only_pool_is_a_clear_error(metadata_pool, tmp_path):
    subset = make_subset([compute_uid("u", "c")], tmp_path / "s.npy")
    with pytest.raises(ReshardError, match="no tar shards"):
        run_reshard(metadata_pool, subset, tmp_path / "out")


def test_readable_by_open_clip_train_and_plain_webdataset(pool, tmp_path):
    import open_clip
    from open_clip_train.data import get_wds_dataset

    uids = sorted(pool_samples(pool))
    out = tmp_path / "out"
    run_reshard(pool, make_subset(uids, tmp_path / "s.npy"), out, ReshardConfig(shard_size=25))
    n = len(json.loads((out / "sizes.json").read_text()))
    urls = str(out / f"{{00000..{n - 1:05d}}}.tar")
    plain = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json"))
    assert len(plain) == len(uids) and all(img.size == (24, 24) for img, _, _ in plain)

    preprocess = open_clip.image_transform(32, is_train=True)  # what the trainer builds, without a model
    args = Namespace(
        train_data=urls, train_num_samples=None, train_data_upsampling_factors=None,
        dataset_resampled=False, seed=0, batch_size=8, workers=1, world_size=1,
    )  # fmt: skip
    info = get_wds_dataset(
        args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("RN50")
    )
    assert info.dataloader.num_samples >= len(uids)  # from sizes.json
    batches = list(info.dataloader)
    assert len(batches) == info.dataloader.num_batches
    images, texts = batches[0]
    assert images.shape == (8, 3, 32, 32) and texts.shape == (8, 77)


def test_cli_reshard(pool, tmp_path):
    subset = make_subset(sorted(pool_samples(pool))[:9], tmp_path / "s.npy")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["reshard", str(pool), str(subset), "--out", str(out), "--set", "shard_size=4"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 1}
    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
    assert {n.split(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
    assert np.all(np.diff([int(n.split(".")[0]) for n in names[::3]]) == 1)


def test_a_truncated_pool_tar_loses_only_its_damaged_samples(pool, tmp_path, caplog):
    samples = pool_samples(pool)
    uids = sorted(samples)
    tar = pool / "00001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    result = run_reshard(pool, make_subset(uids, tmp_path / "s.npy"), tmp_path / "out")
    assert result.complete
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    lost = stats["funnel"]["dropped"]["truncated_tar"]  # lost where the tar is cut, not merely absent
    in_shard = sum(s["shard"] == "00001" for s in samples.values())
    assert 0 < lost < in_shard and stats["total"] == len(uids) - lost
    assert "damaged" in caplog.text


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_index_matches_tarfile(tmp_path, fmt):
    from curation.core.tarindex import index_tar

    path = tmp_path / "t.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w", format=fmt) as tar:
        for i in range(20):
            # long names need a ustar prefix, a GNU long-name header or a pax record
            stem = f"{'d' * 60}/{'s' * 70}/{i:04d}" if i % 3 == 0 else f"{i:04d}"
            for ext in ("jpg", "txt"):
                data = rng.bytes(int(rng.integers(0, 2000)))
                info = tarfile.TarInfo(f"{stem}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        directory = tarfile.TarInfo("adir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
    expected: dict = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                key, _, ext = Path(m.name).name.partition(".")
                expected.setdefault(key, []).append((ext, m.offset_data, m.size))
    got = {k: [(m.ext, m.offset, m.size) for m in v] for k, v in index_tar(path).items()}
    assert got == expected and len(got) == 20


def test_tar_sink_writes_the_bytes_webdataset_writes(tmp_path):
    """The byte-copy writer must stay a drop-in for webdataset's TarWriter: same headers, padding, end."""
    from curation.reshard.tarwrite import TarSink

    rng = np.random.default_rng(0)
    samples = []
    for i in range(200):
        exts = rng.choice(["cls", "jpg", "json", "txt"], size=int(rng.integers(1, 5)), replace=False)
        sizes = rng.choice([0, 1, 511, 512, 513, 3000], size=len(exts))
        samples.append((f"{i:011d}", {str(e): rng.bytes(int(s)) for e, s in zip(exts, sizes, strict=True)}))
    samples += [("é" * 40, {"jpg": b"non-ascii name"}), ("k" * 120, {"txt": b"long name"})]
    with wds.TarWriter(str(tmp_path / "wds.tar"), encoder=False, mtime=1_700_000_000) as writer:
        for key, files in samples:
            writer.write({"__key__": key, **files})
    with TarSink(tmp_path / "sink.tar", 1_700_000_000) as sink:
        for key, files in samples:
            for ext in sorted(files):
                sink.add(f"{key}.{ext}", memoryview(files[ext]))
    assert (tmp_path / "sink.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()
