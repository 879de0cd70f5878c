"""The score, copydesc, train_head and score_head stages on a pool on object storage (moto S3 on
127.0.0.1, memory://): every object they write is byte-identical to the same run on local disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from curation.core import storage
from curation.core.pool import Pool
from curation.core.stagedef import STAGES, StageResult
from curation.engines import get_engine
from curation.scoring.model import ModelLoadError, ModelSpec
from tests import test_scoring
from tests.image_pool import write_image_pool
from tests.s3kit import SECRET

COLUMN = "clip_score_tiny_vit"
MEM = "memory://scoring-s3"
_keep_torch_threads = test_scoring._keep_torch_threads  # the scoring tests' fixtures, shared
ckpt = test_scoring.ckpt
TIMING = ("seconds",)  # stats fields that measure how long a shard took, not what it computed


def run_stage(name: str, inputs: dict[str, Any], settings: dict[str, Any], workers: int = 1) -> StageResult:
    stage = STAGES.get(name)
    cfg = stage.load_config(settings=settings)
    return stage.run(stage.make_inputs(inputs), cfg, get_engine("local", workers=workers)).check(name)


def score_settings(pretrained: str, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny-vit", "pretrained": pretrained, "device": "cpu", "batch_size": 5,
            "loader_workers": 0, **kw}  # fmt: skip


def tree(root: str | Path) -> dict[str, bytes]:
    """Every file under ``root`` (a local folder or a URL) by relative path, with its bytes."""
    loc = storage.location(root)
    if not storage.is_remote(loc):
        files = sorted(p for p in Path(loc).rglob("*") if p.is_file())
        return {p.relative_to(loc).as_posix(): p.read_bytes() for p in files}
    prefix = loc.path.rstrip("/") + "/"
    return {f[len(prefix) :]: loc.fs.cat_file(f) for f in sorted(loc.fs.find(loc.path))}


def without_timing(stats: bytes) -> dict[str, Any]:
    data = json.loads(stats)
    for stage in data["stages"]:
        extra = stage.get("extra", {})
        for key in [k for k in extra if k.startswith(TIMING)]:
            extra[key] = None
    return data


def assert_same_outputs(local: dict[str, bytes], remote: dict[str, bytes]) -> None:
    """Every object byte-identical; completion markers hold a time, stats only timing may differ."""
    assert sorted(local) == sorted(remote)
    for rel, data in local.items():
        if "/_done/" in f"/{rel}":
            assert json.loads(data)["shard"] == json.loads(remote[rel])["shard"], rel
        elif "/_stats/" in f"/{rel}":
            assert without_timing(data) == without_timing(remote[rel]), rel
        else:
            assert data == remote[rel], rel


def test_score_and_copydesc_on_s3_write_the_objects_of_a_local_run(tmp_path, s3, ckpt):
    local = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=8, failed_every=4)
    remote = f"{s3.url}/pools/p1"
    storage.upload_dir(local, remote)
    run_stage("score", {"pool": str(local)}, score_settings(str(ckpt), loader_workers=1))
    run_stage("copydesc", {"pool": str(local)}, {})
    run_stage("score", {"pool": remote}, score_settings(str(ckpt), loader_workers=1))
    run_stage("copydesc", {"pool": remote}, {}, workers=2)  # in spawned workers: each opens the bucket
    attrs = tree(local / "attributes")
    assert {f"{COLUMN}/00001.parquet", f"{COLUMN}/_model.json", "copydesc/00001.parquet"} < set(attrs)
    written = tree(f"{remote}/attributes")
    assert_same_outputs(attrs, written)
    assert not [rel for rel, data in written.items() if SECRET.encode() in data]
    assert not [k for k in s3.keys("pools") if "_pending" in k or "staging" in k]
    for column in (COLUMN, "copydesc"):  # what the stages wrote reads back in this process
        table = Pool(remote).read_attributes(column)
        assert table.num_rows == 12 and table[column].null_count == 0
    stats = json.loads(attrs[f"{COLUMN}/_stats/00000.json"])["stages"][0]["extra"]
    assert stats["seconds_encode"] > 0  # the one kind of field that may differ (timing)

    # a rerun on s3 skips every finished shard and leaves the objects as they are
    before = tree(f"{remote}/attributes")
    run_stage("score", {"pool": remote}, score_settings(str(ckpt)))
    assert tree(f"{remote}/attributes") == before


def test_checkpoint_head_and_positives_by_url(tmp_path, ckpt):
    """memory://: a checkpoint, a positives list and a head on object storage; train_head and
    score_head on a remote pool write the bytes of the local run."""
    local = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=6)
    remote, ckpt_url = f"{MEM}/pool", f"{MEM}/models/tiny.pt"
    storage.remove(MEM, recursive=True)
    storage.upload_dir(local, remote)
    storage.write_bytes(ckpt_url, ckpt.read_bytes())

    # the score by a checkpoint URL: the same numbers as by its local path, pinned by its content hash
    run_stage("score", {"pool": str(local)}, score_settings(str(ckpt)))
    run_stage("score", {"pool": remote}, score_settings(ckpt_url))
    pools = (local, remote)
    for shard in ("00000", "00001"):
        by_path, by_url = (storage.read_parquet(f"{p}/attributes/{COLUMN}/{shard}.parquet") for p in pools)
        assert by_url.equals(by_path.replace_schema_metadata(by_url.schema.metadata))  # all but the tag
    identity = [json.loads(storage.read_bytes(f"{p}/attributes/{COLUMN}/_model.json")) for p in pools]
    assert identity[1]["pretrained"] == ckpt_url and identity[1]["sha256"] == identity[0]["sha256"]
    with pytest.raises(ModelLoadError, match=re.escape(f"{MEM}/models/nope.pt: no such checkpoint")):
        ModelSpec("tiny-vit", f"{MEM}/models/nope.pt").check()

    # a head trained from a positives list on the remote pool, written to a URL, applied by URL
    emb = Pool(local).read_attributes(COLUMN, ["uid", "image_emb"])
    vectors = np.array(emb["image_emb"].to_pylist(), np.float32)
    positives = "\n".join(u for u, v in zip(emb["uid"].to_pylist(), vectors[:, 0] > 0, strict=True) if v)
    (tmp_path / "pos.txt").write_text(positives + "\n")
    storage.write_bytes(f"{MEM}/pos.txt", (positives + "\n").encode())
    head = {"embeddings": {"attribute": COLUMN, "column": "image_emb"}, "hidden": [8], "epochs": 50}
    heads = {"local": tmp_path / "heads" / "q.pt", "remote": f"{MEM}/heads/q.pt"}
    run_stage("train_head", {"pool": str(local), "out": str(heads["local"])},
              {**head, "positives": str(tmp_path / "pos.txt")})  # fmt: skip
    result = run_stage("train_head", {"pool": remote, "out": heads["remote"]},
                       {**head, "positives": f"{MEM}/pos.txt"})  # fmt: skip
    assert result.summary["head"] == heads["remote"]
    assert storage.read_bytes(heads["remote"]) == heads["local"].read_bytes()
    figures = json.loads(storage.read_bytes(f"{MEM}/heads/q.json"))
    assert figures["config"].pop("positives") == f"{MEM}/pos.txt"
    expected = json.loads(heads["local"].with_suffix(".json").read_bytes())
    assert expected["config"].pop("positives") == str(tmp_path / "pos.txt")
    assert figures == expected
    for pool, head_file in ((str(local), heads["local"]), (remote, heads["remote"])):
        run_stage("score_head", {"pool": pool}, {"head": str(head_file), "embeddings": head["embeddings"]})
    assert_same_outputs(tree(local / "attributes" / "quality"), tree(f"{remote}/attributes/quality"))
    storage.remove(MEM, recursive=True)


def test_a_listing_sees_what_another_process_wrote(s3, tmp_path):
    """Engine workers write attribute objects under a prefix the driver listed before they ran
    (the score driver lists it to sweep a killed run's objects): the driver must not answer later
    listings and reads from what it saw then (s3fs caches listings unless told not to)."""
    out = f"{s3.url}/pool/attributes/col"
    storage.write_bytes(f"{out}/_model.json", b"{}")
    assert storage.list_files(out, "*.parquet") == []
    pq_bytes = storage.parquet_bytes(pa.table({"uid": ["a"], "col": [1.0]}))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    code = f"from curation.core import storage; storage.write_bytes({out + '/00000.parquet'!r}, {pq_bytes!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert [p.name for p in storage.list_files(out, "*.parquet")] == ["00000.parquet"]
    assert storage.read_parquet(f"{out}/00000.parquet")["col"].to_pylist() == [1.0]
