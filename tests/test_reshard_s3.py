"""Reshard, card and hardmatch with inputs and outputs on object storage (moto S3 on 127.0.0.1,
memory://): every object they write is byte-identical to the same run on local disk.

Files that record where the run read from (the plan's fingerprint, stats.json, the card's
provenance) are compared with the locations normalised; completion markers and the plan's
``created`` hold wall-clock times and are compared without them.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core import storage
from curation.core.pool import Pool
from curation.core.subset import Subset
from curation.reshard.run import ReshardConfig, WriteJob, run_reshard
from tests.selpools import write_image_pool

TIMES = ("created", "finished")  # wall-clock fields, the only ones allowed to differ
JSON = (".json", ".done")  # records (markers are JSON too)


def _remote_root(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "s3":
        return request.getfixturevalue("s3").url
    return f"memory://reshard-{uuid.uuid4().hex[:8]}"


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def remote_files(url: str) -> dict[str, bytes]:
    loc = storage.location(url)
    base = loc.path.rstrip("/")
    return {name[len(base) + 1 :]: loc.fs.cat_file(name) for name in sorted(loc.fs.find(base))}


def normalised(name: str, data: bytes, swaps: dict[str, str], drop: tuple[str, ...] = TIMES) -> object:
    """An object's content for comparison: JSON with locations swapped and the ``drop`` keys (times)
    removed, at any depth."""
    if not name.endswith(JSON):
        return data
    text = data.decode()
    for old, new in swaps.items():
        text = text.replace(old, new)
    return _without(json.loads(text), drop)


def _without(obj: object, drop: tuple[str, ...]) -> object:
    if isinstance(obj, dict):
        return {k: _without(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_without(v, drop) for v in obj]
    return obj


def assert_same_objects(
    local: dict[str, bytes], remote: dict[str, bytes], swaps: dict[str, str], may_differ: set[str]
) -> None:
    """The same object names; the same bytes except in ``may_differ`` (locations) and markers (times)."""
    assert sorted(remote) == sorted(local)
    for name in local:
        assert normalised(name, remote[name], swaps) == normalised(name, local[name], swaps), name
        if name not in may_differ and not name.endswith(".done"):
            assert remote[name] == local[name], name


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A small image pool, a subset with upsampled uids and a few uids not in the pool, a label table."""
    pool = write_image_pool(tmp_path / "pool", n_shards=3, per_shard=20)
    uids = sorted(u for s in Pool(pool).shard_ids() for u in Pool(pool).read_samples(s)["uid"].to_pylist())
    ghosts = [f"{i:032x}" for i in range(3)]
    listed = uids[::2] + uids[:4] + uids[:2] + ghosts
    subset = Subset.from_hex(listed, {"name": "s3-subset"}).save(tmp_path / "sets" / "s.npy")
    labels = tmp_path / "labels" / "part" / "labels.parquet"
    labels.parent.mkdir(parents=True)
    pq.write_table(pa.table({"uid": uids[:-3], "label": np.arange(len(uids) - 3)}), labels)
    return {"pool": pool, "subset": subset, "labels": tmp_path / "labels", "sets": tmp_path / "sets"}


def upload_inputs(inputs: dict[str, Path], root: str) -> dict[str, str]:
    """The inputs on ``root`` (uploaded now: the tars must not depend on when the subset was written)."""
    for name in ("pool", "sets", "labels"):
        storage.upload_dir(inputs[name], f"{root}/{name}")
    return {"pool": f"{root}/pool", "subset": f"{root}/sets/s.npy", "labels": f"{root}/labels"}


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_reshard_on_object_storage_writes_the_local_bytes(kind, inputs, tmp_path, request):
    root = _remote_root(kind, request)
    remote = upload_inputs(inputs, root)
    cfg = ReshardConfig(shard_size=7, shuffle=True, seed=3)
    local_out = tmp_path / "out"
    local = run_reshard(inputs["pool"], inputs["subset"], local_out, cfg, labels=inputs["labels"])
    result = run_reshard(remote["pool"], remote["subset"], f"{root}/out", cfg, labels=remote["labels"])
    assert local.complete and result.complete and storage.url(result.out) == f"{root}/out"
    got = remote_files(f"{root}/out")
    sizes = json.loads(got["sizes.json"])
    assert len(sizes) > 3 and sum(sizes.values()) == json.loads(got["stats.json"])["total"] > 0
    assert not [k for k in got if k.startswith(("_pending", "_plan/match/_pending"))]  # commits finished
    swaps = {str(inputs["pool"].resolve()): remote["pool"], str(inputs["labels"].resolve()): remote["labels"]}
    assert_same_objects(local_files(local_out), got, swaps, {"_plan/plan.json", "stats.json"})


def test_reshard_resumes_on_s3_and_mixes_local_and_remote(s3, inputs, tmp_path, monkeypatch):
    """A shard that failed on S3 is redone by the rerun, the rest skipped; a remote pool can write a
    local output and a local pool a remote one, all with the same tars."""
    remote = upload_inputs(inputs, s3.url)
    cfg = ReshardConfig(shard_size=8)
    original = WriteJob.run_shard

    def crash_on_shard_1(self, shard, staging):  # type: ignore[no-untyped-def]
        if shard == "00001":
            raise RuntimeError("simulated crash")
        return original(self, shard, staging)

    monkeypatch.setattr(WriteJob, "run_shard", crash_on_shard_1)
    out = f"{s3.url}/out"
    assert not run_reshard(remote["pool"], remote["subset"], out, cfg).complete
    assert "out/00001.tar" not in s3.keys("out") and "out/00000.tar" in s3.keys("out")
    monkeypatch.setattr(WriteJob, "run_shard", original)
    second = run_reshard(remote["pool"], remote["subset"], out, cfg)
    outcomes = Counter(o.status for o in second.reports[0].outcomes)
    assert second.complete and outcomes["done"] == 1 and outcomes["skipped"] >= 2
    run_reshard(remote["pool"], remote["subset"], tmp_path / "to_local", cfg)
    run_reshard(inputs["pool"], inputs["subset"], f"{s3.url}/from_local", cfg)
    tars = {k: v for k, v in remote_files(out).items() if k.endswith(".tar")}
    assert tars == {k: v for k, v in local_files(tmp_path / "to_local").items() if k.endswith(".tar")}
    assert tars == {k: v for k, v in remote_files(f"{s3.url}/from_local").items() if k.endswith(".tar")}
    run_reshard(remote["pool"], remote["subset"], out, ReshardConfig(shard_size=5), overwrite=True)
    sizes = json.loads(storage.read_text(f"{out}/sizes.json"))
    assert set(sizes) == {k.removeprefix("out/") for k in s3.keys("out") if k.endswith(".tar")}


def test_ranges_are_merged_and_read_back_exactly():
    from curation.reshard.ranges import Span, fetch_spans, merge_blocks

    data = bytes(range(256)) * 4096  # 1 MiB
    loc = storage.location(f"memory://ranges-{uuid.uuid4().hex[:8]}/a.tar")
    storage.write_bytes(loc, data)
    spans = [Span(i, loc, s, e) for i, (s, e) in enumerate([(900, 1000), (0, 10), (20, 30), (5000, 6000)])]
    blocks, where = merge_blocks(spans)
    assert len(blocks) == 1 and where == [0, 0, 0, 0]
    got = list(fetch_spans(spans, batch_bytes=50))
    assert [i for i, _ in got] == [0, 1, 2, 3]
    assert all(bytes(v) == data[s.start : s.end] for (_, v), s in zip(got, spans, strict=True))
    with pytest.raises(OSError, match="short read"):
        list(fetch_spans([Span(0, loc, len(data) - 5, len(data) + 5)]))
