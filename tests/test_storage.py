"""Locations as URLs: reading and writing on memory:// and a real S3 server (moto on 127.0.0.1), the
commit protocol without rename, secrets kept out of messages, and clear errors for bad storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.core import storage
from curation.core.io import atomic_write_json, atomic_write_parquet, read_json
from curation.core.runner import ShardJob, process_shard, sweep_leftovers
from curation.core.stats import StageStats
from tests.s3kit import SECRET, aws_env


def test_location_keeps_urls_and_local_paths() -> None:
    assert storage.is_remote("s3://b/k") and storage.is_remote("memory://x/y")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    assert str(storage.location("file:///tmp/x")) == "/tmp/x"
    assert storage.url(Path("s3://b/k")) == "s3://b/k"  # a URL that went through pathlib
    assert storage.url(storage.location("s3://b/pool") / "00000.parquet") == "s3://b/pool/00000.parquet"


def test_location_field_records_a_plain_string() -> None:
    from curation.core.config import ConfigModel

    class Inputs(ConfigModel):
        pool: storage.Location

    inputs = Inputs(pool="s3://bucket/pool")
    assert storage.is_remote(inputs.pool)
    assert inputs.model_dump(mode="json") == {"pool": "s3://bucket/pool"}
    assert Inputs.model_validate(inputs.model_dump()).pool == inputs.pool


@pytest.mark.parametrize("root", ["memory://store/t1", "s3"])
def test_files_round_trip(root: str, request: pytest.FixtureRequest) -> None:
    if root == "s3":
        root = request.getfixturevalue("s3").url + "/t1"
    base = storage.location(root)
    table = pa.table({"uid": ["a", "b"], "x": [1.0, 2.0]})
    atomic_write_parquet(base / "attrs" / "00000.parquet", table)
    atomic_write_json(base / "m.json", {"n": 2})
    storage.write_bytes(base / "a.npy", storage.npy_bytes(np.arange(5)))
    assert storage.read_parquet(base / "attrs" / "00000.parquet").equals(table)
    assert read_json(base / "m.json") == {"n": 2}
    assert storage.load_npy(base / "a.npy").tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in storage.list_files(base / "attrs", "*.parquet")] == ["00000.parquet"]
    assert storage.list_files(base / "nothing-here") == []
    storage.remove(base, recursive=True)
    assert not (base / "m.json").exists()


class TwoFiles(ShardJob):
    """Writes two objects per shard; ``fail_after`` makes the commit die after that many uploads."""

    name = "twofiles"

    def __init__(self, out: str) -> None:
        self.out = storage.location(out)

    def shards(self) -> list[str]:
        return ["00000", "00001"]

    def output_dir(self):  # type: ignore[no-untyped-def]
        return self.out

    def run_shard(self, shard, staging):  # type: ignore[no-untyped-def]
        (staging / f"{shard}.a").write_text("a" + shard)
        (staging / "sub").mkdir()
        (staging / "sub" / f"{shard}.b").write_text("b" + shard)
        return [StageStats("twofiles")]


def test_commit_without_rename_leaves_no_stray_objects(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    out = f"{s3.url}/job"
    job = TwoFiles(out)
    real_upload = storage.upload
    calls = {"n": 0}

    def dying_upload(local, loc):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-commit")  # not caught by the runner, like a SIGKILL
        real_upload(local, loc)

    monkeypatch.setattr(storage, "upload", dying_upload)
    with pytest.raises(KeyboardInterrupt):
        process_shard(job, "00000")
    monkeypatch.setattr(storage, "upload", real_upload)
    left = s3.keys("job")
    assert "job/00000.a" in left and "job/_pending/00000.json" in left and "job/_done/00000.done" not in left
    removed = sweep_leftovers(storage.location(out))
    expected = {f"{out}/00000.a", f"{out}/sub/00000.b", f"{out}/_pending/00000.json"}
    assert {storage.url(p) for p in removed} == expected
    assert s3.keys("job") == []
    for shard in job.shards():
        assert process_shard(job, shard).status == "done"
    assert s3.keys("job") == [
        "job/00000.a", "job/00001.a", "job/_done/00000.done", "job/_done/00001.done",
        "job/_stats/00000.json", "job/_stats/00001.json", "job/sub/00000.b", "job/sub/00001.b",
    ]  # fmt: skip
    assert process_shard(job, "00000").status == "skipped"


def test_redact_hides_secret_env_and_options(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    assert storage.redact(f"signature from {SECRET}!") == "signature from ***!"
    monkeypatch.setattr(storage, "_configured", {"gs": {"token": "tok-1234567"}})
    assert "tok-1234567" not in storage.redact("token=tok-1234567")


def test_unreachable_endpoint_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in aws_env("http://127.0.0.1:9").items():  # nothing listens on port 9
        monkeypatch.setenv(key, value)
    storage.reset_clients()
    with pytest.raises(storage.StorageError, match=r"s3://nowhere/pool.*(connect|Connect)") as err:
        storage.check_bucket("s3://nowhere/pool")
    assert SECRET not in str(err.value)
    storage.reset_clients()


def test_missing_bucket_is_named(s3) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(storage.StorageError, match=r"bucket 'no-such-bucket' does not exist"):
        storage.check_bucket("s3://no-such-bucket/pool")


@pytest.fixture
def iam(auth_moto: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A bucket on the auth-checking server and a user who may read it all but write only under ``rw/``."""
    import boto3

    admin = aws_env(auth_moto, "AKIAADMIN00000000000", "admin-secret")
    kw = {"endpoint_url": auth_moto, "region_name": "us-east-1"}
    kw["aws_access_key_id"] = admin["AWS_ACCESS_KEY_ID"]
    kw["aws_secret_access_key"] = admin["AWS_SECRET_ACCESS_KEY"]
    boto3.client("s3", **kw).create_bucket(Bucket="locked")
    client = boto3.client("iam", **kw)
    client.create_user(UserName="curator")
    key = client.create_access_key(UserName="curator")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:List*", "s3:Get*"], "Resource": "*"},  # read everything
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"], "Resource": ["arn:aws:s3:::locked/rw/*"]},  # noqa: E501
    ]}  # fmt: skip
    client.put_user_policy(UserName="curator", PolicyName="rw-prefix", PolicyDocument=json.dumps(policy))
    return auth_moto, key["AccessKeyId"], key["SecretAccessKey"]


def test_wrong_credentials_and_read_only_prefix(iam, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    endpoint, key, secret = iam
    for k, v in aws_env(endpoint, key, secret).items():
        monkeypatch.setenv(k, v)
    storage.reset_clients()
    storage.check_bucket("s3://locked/rw/out", write=True)  # allowed
    with pytest.raises(storage.StorageError, match=r"cannot write to s3://locked/ro/out") as ro:
        storage.check_bucket("s3://locked/ro/out", write=True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + SECRET)
    storage.reset_clients()
    with pytest.raises(storage.StorageError, match=r"s3://locked/rw/out") as wrong:
        storage.check_bucket("s3://locked/rw/out")
    for err in (ro, wrong):
        assert secret not in str(err.value) and SECRET not in str(err.value)
    storage.reset_clients()


@pytest.mark.parametrize(
    "args",
    [
        ["filter", "s3://no-such-bucket/pool"],
        ["select", "s3://no-such-bucket/pool", "-o", "/tmp/x.npy", "--step", "topk: {score: s, fraction: 1}"],
    ],
    ids=["filter", "select"],
)
def test_a_command_on_a_missing_bucket_exits_2_naming_the_url(s3, args, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from pipelines.app import main

    monkeypatch.setattr("sys.argv", ["curate", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    output = "".join(capsys.readouterr())
    assert exit_.value.code == 2, output
    assert "s3://no-such-bucket/pool" in output and "does not exist" in output
    assert SECRET not in output and "Traceback" not in output


def test_a_job_files_storage_options_reach_the_store_and_no_output(s3, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Endpoint and keys given only in the job file's storage_options: the job runs on s3, the
    options travel to workers in CURATION_STORAGE_OPTIONS, and no object holds the secret."""
    import fsspec.config
    import yaml

    from curation.engines import open_engine
    from curation.engines.cluster import worker_env
    from tests.conftest import write_metadata_pool
    from workflows.jobfile import load_job, run_job_file

    storage.upload_dir(write_metadata_pool(tmp_path / "pool"), f"{s3.url}/job/pool")
    secret = "options-secret-" + SECRET[-8:]
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setattr(storage, "_configured", {})
    monkeypatch.setattr(fsspec.config, "conf", {k: dict(v) for k, v in fsspec.config.conf.items()})
    storage.reset_clients()
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({
        "name": "opts", "workdir": f"{s3.url}/job",
        "storage_options": {"s3": {"endpoint_url": s3.endpoint, "key": "AKIAOPTIONS", "secret": secret}},
        "steps": [{"stage": "filter", "with": {"pool": "pool", "config": "${conf}/filters/basic.yaml"}}],
    }))  # fmt: skip
    with open_engine("local") as eng:
        runs = run_job_file(load_job(job_file), eng)
    assert [r.status for r in runs] == ["done"]
    assert secret in worker_env()[storage.OPTIONS_ENV]  # workers get the options (not in any file)
    assert storage.redact(f"x {secret} y") == "x *** y"
    objects = s3.keys("job")
    assert any(k.startswith("job/pool/attributes/basic/") for k in objects)
    assert not [k for k in objects if secret.encode() in s3.fs().cat_file(f"{s3.bucket}/{k}")]
    storage.reset_clients()


def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    from curation.core import io as core_io

    atomic_write_json(tmp_path / "m.json", {"n": 1})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~core_io._UMASK
