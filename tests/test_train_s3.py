"""Training and evaluation on object storage (moto's S3 server on 127.0.0.1, the ``s3`` fixture).

Shards are read from s3 through webdataset ``pipe:`` URLs (``python -m curation.core.storage cat``),
which the training processes open in-process through fsspec; the run folder lives on s3 (trained in
a local temp folder, mirrored while training, ``run.json`` last); evaluation reads the checkpoint
from s3 and writes its results there. Every result is compared with the same work on local disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import open_clip
import pytest
import torch
import webdataset as wds

from curation.core import storage
from curation.core.models import register_project_models
from tests.evalsuite_factory import make_suite
from tests.s3kit import S3
from tests.shapes_fixture import write_shards
from trainer.evaluatees import ModelSourceError, resolve_source
from trainer.presets import load_preset
from trainer.runs import load_checkpoint, load_run
from trainer.runsync import RunSync
from trainer.shards import ShardError, install_fsspec_opener, open_shards, piped_url
from trainer.train import TrainRequest, train

ROOT = Path(__file__).resolve().parent.parent
EVAL_MODEL = "tiny-vit"
# 4 chunks (resume points) of 2 steps of 64 samples: long enough to kill a run between epochs.
BUDGET = {"mode": "equal_samples", "samples_seen": 512, "seed": 0, "device": "cpu"}
METRICS = ("samples_seen", "final_loss", "final_loss_avg", "epochs", "data_samples", "budget", "mode")


def upload(local: Path, s3: S3, prefix: str) -> str:
    storage.upload_dir(local, f"{s3.url}/{prefix}")
    return f"{s3.url}/{prefix}"


def samples(urls: list[str]) -> list[tuple[str, bytes]]:
    """Every (key, jpg bytes) webdataset reads from these URLs, in order."""
    return [(s["__key__"], s["jpg"]) for s in wds.WebDataset(urls, shardshuffle=False)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shapes") / "train", n_per_class=22, n_shards=2, seed=0)


def request(shards: object, out: object) -> TrainRequest:
    preset = load_preset("tiny")
    return TrainRequest(shards=storage.location(shards), out=storage.location(out), preset=preset, **BUDGET)


@pytest.fixture(scope="module")
def local_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "local"
    train(request(shapes, out))
    return out


# ---------------------------------------------------------------- shards (fast)


def test_shards_on_s3_read_like_local_ones_by_pipe_and_in_process(
    s3: S3, shapes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = upload(shapes, s3, "shards")
    remote, local = open_shards(url), open_shards(shapes)
    assert remote.sizes == local.sizes and remote.num_samples == 132 and str(remote.directory) == url
    spec = remote.url_spec()
    assert spec.startswith(f"pipe:{sys.executable} -m curation.core.storage cat ")
    assert spec.endswith(f"'{url}/{{00000..00001}}.tar'")  # braces expanded by webdataset, per shard
    assert [piped_url(u) for u in remote.urls] == remote.paths == [f"{url}/00000.tar", f"{url}/00001.tar"]
    assert piped_url("pipe:curl -s http://x/0.tar") is None and piped_url(local.paths[0]) is None
    want = samples(local.paths)
    assert samples(remote.urls) == want  # stock webdataset: one `python -m ... cat` per shard

    from webdataset.gopen import gopen_schemes

    monkeypatch.setitem(gopen_schemes, "pipe", gopen_schemes["pipe"])  # restored after the test
    install_fsspec_opener()
    install_fsspec_opener()  # idempotent
    assert samples(remote.urls) == want  # the training processes: opened in-process through fsspec
    assert samples([f"pipe:cat {p}" for p in local.paths]) == want  # any other command still runs

    storage.remove(f"{url}/sizes.json")
    with pytest.raises(ShardError, match=r"no sizes\.json"):
        open_shards(url)
    with pytest.raises(ShardError, match="nothing under that prefix"):
        open_shards(f"{s3.url}/nowhere")


def test_cat_command_streams_objects_and_reports_missing_ones(s3: S3, shapes: Path) -> None:
    url = upload(shapes, s3, "cat")
    cmd = [sys.executable, "-m", "curation.core.storage", "cat"]
    done = subprocess.run([*cmd, f"{url}/00000.tar", f"{url}/sizes.json"], capture_output=True, check=True)
    assert done.stdout == (shapes / "00000.tar").read_bytes() + (shapes / "sizes.json").read_bytes()
    missing = subprocess.run([*cmd, f"{url}/gone.tar"], capture_output=True, text=True)
    assert missing.returncode == 1 and f"{url}/gone.tar" in missing.stderr
    from tests.s3kit import SECRET

    assert SECRET not in missing.stderr


# ---------------------------------------------------------------- the run folder on s3 (fast)


def test_run_sync_uploads_changes_deletes_what_went_and_writes_run_json_last(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, remote = tmp_path / "work", storage.location(f"{s3.url}/runs/r")
    (work / "openclip" / "checkpoints").mkdir(parents=True)
    (work / "plan.json").write_text("{}")
    (work / "openclip" / "checkpoints" / "epoch_latest.pt").write_bytes(b"state 1")
    (work / "openclip" / "checkpoints" / "tmp.pt").write_bytes(b"half a checkpoint")
    (work / "run.json").write_text("{}")
    sync = RunSync(work, remote, every_s=3600)
    order: list[str] = []
    upload = storage.upload
    monkeypatch.setattr(storage, "upload", lambda src, dst: (order.append(str(dst)), upload(src, dst)))
    (work / "openclip" / "out.log").write_text("epoch 1 done\n")
    assert sync.push() == 3 and sync.push() == 0  # only what changed, never run.json or a partial file
    assert order[-1].endswith("epoch_latest.pt")  # a training state after the logs that describe it
    assert s3.keys("runs") == [
        "runs/r/openclip/checkpoints/epoch_latest.pt",
        "runs/r/openclip/out.log",
        "runs/r/plan.json",
    ]
    (work / "openclip" / "checkpoints" / "epoch_latest.pt").write_bytes(b"state 2, longer")
    (work / "openclip" / "checkpoints" / "epoch_2.pt").write_bytes(b"duplicate")
    sync.push()
    (work / "openclip" / "checkpoints" / "epoch_2.pt").unlink()  # the trainer removed it
    with sync:
        pass
    assert order[-1].endswith("run.json")
    assert s3.keys("runs") == [
        "runs/r/openclip/checkpoints/epoch_latest.pt", "runs/r/openclip/out.log", "runs/r/plan.json",
        "runs/r/run.json",
    ]  # fmt: skip
    assert storage.read_bytes(remote / "openclip/checkpoints/epoch_latest.pt") == b"state 2, longer"

    again = RunSync(tmp_path / "again", remote)
    want = ["plan.json", "openclip/out.log", "openclip/checkpoints/epoch_latest.pt"]
    assert again.pull() == want  # what a resume needs
    assert (tmp_path / "again" / "openclip/checkpoints/epoch_latest.pt").read_bytes() == b"state 2, longer"
    assert again.push(final=True) == 0  # pulled files are not uploaded back


def test_train_refuses_a_finished_run_or_a_foreign_prefix_on_s3(s3: S3, shapes: Path) -> None:
    from trainer.plan import TrainError

    storage.write_bytes(f"{s3.url}/done/run.json", b"{}")
    with pytest.raises(TrainError, match=f"{s3.url}/done already holds a finished run"):
        train(request(shapes, f"{s3.url}/done"))
    storage.write_bytes(f"{s3.url}/mine/notes.txt", b"mine")
    with pytest.raises(TrainError, match="not a run directory"):
        train(request(shapes, f"{s3.url}/mine"))
    assert s3.keys() == ["done/run.json", "mine/notes.txt"]


# ---------------------------------------------------------------- evaluation from and to s3 (fast)


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_suite(tmp_path_factory.mktemp("suite"))


def evaluate(source: str, suite: str, out: str, **extra: object) -> dict:
    from curation.core.stagedef import STAGES

    stage = STAGES.get("evaluate")
    cfg = stage.load_config(None, None, ["device=cpu", "workers=0", "batch_size=16", "bootstrap.samples=50"])
    inputs = stage.make_inputs({"source": source, "suite": suite, "out": out, **extra})
    return stage.run(inputs, cfg, None).summary


def comparable(text: str) -> list[dict]:
    """Result records without what names the weights (a path or a URL, a run's name) and the time taken."""
    records = [json.loads(line) for line in text.splitlines()]
    for r in records:
        for key in ("pretrained", "label", "seconds"):
            r.pop(key)
    return records


def test_evaluate_reads_a_run_on_s3_and_writes_results_there(s3: S3, suite_dir: Path, tmp_path: Path) -> None:
    register_project_models()
    torch.manual_seed(0)
    model = open_clip.create_model(EVAL_MODEL)
    run = tmp_path / "tiny-run"
    run.mkdir()
    torch.save({"state_dict": model.state_dict(), "kind": "clip", "model": EVAL_MODEL}, run / "checkpoint.pt")
    (run / "run.json").write_text(
        json.dumps({"kind": "clip", "model": EVAL_MODEL, "checkpoint": "checkpoint.pt"})
    )
    run_url, suite_url = upload(run, s3, "runs/tiny-run"), upload(suite_dir, s3, "suite")

    here = evaluate(str(run), str(suite_dir), str(tmp_path / "eval"), clip_benchmark=str(tmp_path / "cb"))
    there = evaluate(run_url, suite_url, f"{s3.url}/eval", clip_benchmark=f"{s3.url}/cb")
    assert there["out"] == f"{s3.url}/eval" and there["results"] == f"{s3.url}/eval/results.jsonl"
    local_files = sorted(
        p.relative_to(tmp_path / "eval").as_posix() for p in (tmp_path / "eval").rglob("*.*")
    )
    assert s3.keys("eval") == [f"eval/{f}" for f in local_files]
    for name in local_files:
        if name.startswith("samples/"):  # per-sample arrays: byte-identical
            assert storage.read_bytes(f"{s3.url}/eval/{name}") == (tmp_path / "eval" / name).read_bytes(), (
                name
            )
    got = storage.read_text(f"{s3.url}/eval/results.jsonl")
    assert comparable(got) == comparable((tmp_path / "eval" / "results.jsonl").read_text())
    assert here["records"][0]["label"] == "tiny-run"
    assert {json.loads(line)["pretrained"] for line in got.splitlines()} == {f"{run_url}/checkpoint.pt"}
    assert {json.loads(line)["label"] for line in got.splitlines()} == {
        "tiny-run"
    }  # the run's name, as locally
    assert [k.removeprefix("cb/") for k in s3.keys("cb")] == sorted(
        p.name for p in (tmp_path / "cb").iterdir()
    )

    # the default output folder of a run on s3 is RUN/eval/SUITE, on s3 too
    default = evaluate(run_url, suite_url, None)
    assert default["out"] == f"{run_url}/eval/tiny"
    assert storage.location(f"{run_url}/eval/tiny/results.jsonl").exists()
    assert load_run(run_url).checkpoint == storage.location(f"{run_url}/checkpoint.pt")
    assert load_run(f"{run_url}/checkpoint.pt").run_dir == storage.location(run_url)
    bare = resolve_source(f"{run_url}/checkpoint.pt", EVAL_MODEL, None)  # a checkpoint file on s3
    assert (bare.pretrained, bare.label) == (f"{run_url}/checkpoint.pt", f"{EVAL_MODEL}/checkpoint")
    with pytest.raises(ModelSourceError, match="no such checkpoint"):
        resolve_source(f"{run_url}/nothing.pt", EVAL_MODEL, None)


# ---------------------------------------------------------------- real training (slow)


@pytest.mark.slow
def test_tiny_run_on_s3_equals_the_local_run_and_evaluates_from_s3(
    s3: S3, shapes: Path, local_run: Path, suite_dir: Path, tmp_path: Path
) -> None:
    shards_url, run_url = upload(shapes, s3, "shards"), f"{s3.url}/runs/tiny"
    run = train(request(shards_url, run_url))
    assert str(run.checkpoint) == f"{run_url}/checkpoint.pt" and run.checkpoint.exists()
    written = ["attempts.json", "checkpoint.pt", "openclip/checkpoints/epoch_latest.pt"]
    written += ["openclip/console.log"]
    written += ["openclip/out.log", "openclip/params.txt", "plan.json", "run.json"]
    assert s3.keys("runs") == [f"runs/tiny/{name}" for name in written]
    here = json.loads((local_run / "run.json").read_text())
    there = json.loads(storage.read_text(f"{run_url}/run.json"))
    # The trainer is deterministic for a seed (trainer.seeding) and reads the same bytes: equal, not close.
    assert {k: there[k] for k in METRICS} == {k: here[k] for k in METRICS}
    assert there["data"] == shards_url
    train_data = there["open_clip_train_args"][there["open_clip_train_args"].index("--train-data") + 1]
    assert train_data == open_shards(shards_url).url_spec() and train_data.startswith("pipe:")
    a, b = load_checkpoint(local_run / "checkpoint.pt"), load_checkpoint(run.checkpoint)
    assert a.keys() == b.keys() and a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    from tests.s3kit import SECRET

    assert not any(
        SECRET in storage.read_text(f"{s3.url}/{k}") for k in s3.keys("runs") if not k.endswith(".pt")
    )

    local_eval = evaluate(str(local_run), str(suite_dir), str(tmp_path / "eval"))
    remote_eval = evaluate(run_url, str(suite_dir), f"{s3.url}/eval")
    assert remote_eval["out"] == f"{s3.url}/eval"
    here_text = (Path(local_eval["out"]) / "results.jsonl").read_text()
    assert comparable(storage.read_text(f"{s3.url}/eval/results.jsonl")) == comparable(here_text)


@pytest.mark.slow
def test_run_killed_on_s3_resumes_from_the_checkpoint_there(s3: S3, shapes: Path, local_run: Path) -> None:
    shards_url, run_url = upload(shapes, s3, "shards"), f"{s3.url}/runs/killed"
    script = textwrap.dedent(f"""
        import trainer.runsync as rs
        rs.SYNC_EVERY_S = 0.3  # upload each epoch's checkpoint at once
        from tests.test_train_s3 import request
        from trainer.train import train
        train(request({shards_url!r}, {run_url!r}))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    state = "runs/killed/openclip/checkpoints/epoch_latest.pt"
    try:
        deadline = time.time() + 300
        while state not in s3.keys("runs") and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert state in s3.keys("runs"), (
            f"no checkpoint on s3 before the kill: {proc.stderr.read().decode()[-2000:]}"
        )
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, open_clip_train and its loader worker
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "runs/killed/run.json" not in s3.keys("runs")
    epoch_at_kill = load_checkpoint(f"{s3.url}/{state}")["epoch"]
    assert epoch_at_kill < 4

    run = train(request(shards_url, run_url))  # same plan: resumes from the epoch_latest.pt on s3

    attempts = json.loads(storage.read_text(f"{run_url}/attempts.json"))
    assert [a["resumed"] for a in attempts] == [True]  # the killed attempt never got to record itself
    resumed, straight = load_checkpoint(run.checkpoint), load_checkpoint(local_run / "checkpoint.pt")
    assert all(
        torch.equal(resumed["state_dict"][k], straight["state_dict"][k]) for k in straight["state_dict"]
    )
    info, here = (
        json.loads(storage.read_text(f"{run_url}/run.json")),
        json.loads((local_run / "run.json").read_text()),
    )
    assert {k: info[k] for k in METRICS} == {k: here[k] for k in METRICS}
