"""Trainer tests: real open_clip_train runs of the tiny preset on a small shapes fixture.

The slow tests share one uninterrupted CLIP run (module fixture): it must learn (zero-shot accuracy
of at least 3x chance on held-out images), its checkpoint must load through open_clip's factory
with identical outputs, and a run killed mid-way and resumed must end with the same weights.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import open_clip
import pytest
import torch

from curation.core.config import ConfigError
from curation.core.models import register_project_models
from tests.shapes_fixture import CLASSNAMES, TEMPLATES, make_samples, write_shards
from trainer.budget import BudgetError, plan_budget
from trainer.oclog import parse_line, summarize
from trainer.presets import available_presets, load_preset
from trainer.runs import RunError, load_run
from trainer.seeding import EpochSeededShuffle
from trainer.shards import ShardError, open_shards
from trainer.supervised import DROP_REASONS, ToExample, _count, load_supervised
from trainer.train import (
    TrainError,
    TrainRequest,
    check_launchable,
    make_plan,
    openclip_args,
    prepare_run_dir,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
# The fixture's budget: 4 chunks (resume points) of 768 samples, batch 64.
BUDGET = ["--samples-seen", "3072"]
CLIP_SAMPLES = 3072
TINY_MODEL = load_preset("tiny").model  # the preset's architecture: what its checkpoints hold


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_shards(tmp_path_factory.mktemp("shapes") / "train", n_per_class=100, n_shards=4, seed=0)
    (out / "classnames.txt").write_text("".join(f"{c}\n" for c in CLASSNAMES))
    return out


@pytest.fixture(scope="module")
def heldout() -> tuple[list, torch.Tensor]:
    samples = make_samples(40, seed=123)  # another seed: images never seen in training
    return [s["image"] for s in samples], torch.tensor([s["label"] for s in samples])


def tiny_request(shards: Path, out: Path, **kw: object) -> TrainRequest:
    fields = {"mode": "equal_samples", "samples_seen": CLIP_SAMPLES, "seed": 0, "device": "cpu"} | kw
    return TrainRequest(shards=shards, out=out, preset=load_preset("tiny"), **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clip_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "clip"
    train(tiny_request(shapes, out))
    return out


def zero_shot_accuracy(
    model: torch.nn.Module, preprocess: object, name: str, images: list, labels: torch.Tensor
) -> float:
    tokenizer = open_clip.get_tokenizer(name)
    templates = [lambda c, t=t: t.format(c=c) for t in TEMPLATES]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(
            model, tokenizer, CLASSNAMES, templates, device="cpu"
        )
        feats = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
    return ((feats @ classifier).argmax(1) == labels).float().mean().item()


# ---------------------------------------------------------------- CLIP runs (slow)


@pytest.mark.slow
def test_tiny_clip_learns_zero_shot(clip_run: Path, heldout: tuple[list, torch.Tensor]) -> None:
    run = load_run(clip_run)
    bundle = run.load_clip(device="cpu")
    acc = zero_shot_accuracy(bundle.model, bundle.preprocess, run.model, *heldout)
    chance = 1 / len(CLASSNAMES)
    assert acc >= 3 * chance, f"zero-shot accuracy {acc:.3f} < 3x chance ({3 * chance:.3f})"
    info = json.loads((clip_run / "run.json").read_text())
    assert info["kind"] == "clip" and info["preset"] == "tiny" and info["mode"] == "equal_samples"
    assert info["samples_seen"] == CLIP_SAMPLES and info["epochs"] == 4 and info["seed"] == 0
    assert info["final_loss"] < 3.5 < torch.log(torch.tensor(64.0)).item()  # below the untrained ln(batch)
    assert info["data"] == str(Path(info["data"]).resolve()) and info["data_samples"] == 600
    assert info["wall_time_s"] > 0 and info["code_version"]


@pytest.mark.slow
def test_checkpoint_loads_through_open_clip_factory(clip_run: Path) -> None:
    register_project_models()
    path = clip_run / "checkpoint.pt"
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(path))
    model.eval()
    # The weights open_clip_train ended with, rebuilt independently of our export.
    state = torch.load(
        clip_run / "openclip/checkpoints/epoch_latest.pt", map_location="cpu", weights_only=False
    )
    reference = open_clip.create_model(TINY_MODEL)
    reference.load_state_dict(state["state_dict"])
    reference.eval()
    images = torch.stack([preprocess(s["image"]) for s in make_samples(2, seed=7)])
    texts = open_clip.get_tokenizer(TINY_MODEL)(["a photo of a red circle", "a blue square"])
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))
        assert torch.equal(model.encode_text(texts), reference.encode_text(texts))
    assert load_run(path).run_dir == clip_run  # a checkpoint path resolves to its run
    assert not (clip_run / "openclip/checkpoints/epoch_4.pt").exists()  # duplicate of epoch_latest removed


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(clip_run: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "pipelines", "train", str(shapes), "--out", str(out), "--preset", "tiny",
           "--mode", "equal_samples", *BUDGET, "--seed", "0", "--device", "cpu"]  # fmt: skip
    state = out / "openclip" / "checkpoints" / "epoch_latest.pt"
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 300
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert state.exists(), f"no epoch checkpoint before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, open_clip_train and its loader worker
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "run.json").exists()
    epoch_at_kill = torch.load(state, map_location="cpu", weights_only=False)["epoch"]
    assert epoch_at_kill < 4

    train(tiny_request(shapes, out))  # same plan: resumes from epoch_latest.pt

    attempts = json.loads((out / "attempts.json").read_text())
    assert [a["resumed"] for a in attempts] == [True]  # the killed attempt never got to record itself
    resumed = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    straight = torch.load(clip_run / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight), "resumed weights differ"
    assert json.loads((out / "run.json").read_text())["samples_seen"] == CLIP_SAMPLES


# ---------------------------------------------------------------- supervised (slow)


@pytest.mark.slow
def test_supervised_learns_and_round_trips(
    shapes: Path, tmp_path: Path, heldout: tuple[list, torch.Tensor]
) -> None:
    out = tmp_path / "sup"
    run = train(tiny_request(shapes, out, supervised=True, samples_seen=2048))
    assert run.kind == "supervised"
    info = json.loads((out / "run.json").read_text())
    assert info["samples_seen"] == 2048 and info["samples_trained"] == 2048 and info["dropped"] == {}
    assert info["classnames"] == CLASSNAMES

    module, preprocess, classnames = load_supervised(out)
    assert classnames == CLASSNAMES
    images, labels = heldout
    x = torch.stack([preprocess(im) for im in images])
    with torch.no_grad():
        logits = module(x)
    acc = (logits.argmax(1) == labels).float().mean().item()
    assert acc >= 3 / len(CLASSNAMES), f"supervised accuracy {acc:.3f}"

    # The checkpoint path loads the same model; the training state holds the same weights.
    module2, _, _ = load_supervised(out / "checkpoint.pt")
    state = torch.load(out / "supervised" / "state.pt", map_location="cpu", weights_only=False)
    module.load_state_dict(state["model"])
    with torch.no_grad():
        assert torch.equal(module2(x), logits) and torch.equal(module(x), logits)


# ---------------------------------------------------------------- fast unit tests


def test_presets_fix_datacomp_scales_and_take_overrides(tmp_path: Path) -> None:
    assert {"tiny", "small", "medium"} <= set(available_presets())
    small, medium = load_preset("small"), load_preset("medium")
    for p in (small, medium):
        assert (p.model, p.batch_size, p.lr, p.warmup, p.wd) == ("ViT-B-32", 4096, 5e-4, 500, 0.2)
    assert (small.samples_seen, medium.samples_seen) == (12_800_000, 128_000_000)
    extra = tmp_path / "p.yaml"
    extra.write_text("lr: 0.01\nimage: {aug_scale: [0.5, 1.0]}\n")
    tiny = load_preset("tiny", extra, ["batch_size=32"])
    assert (tiny.lr, tiny.batch_size, tiny.image.aug_scale) == (0.01, 32, (0.5, 1.0))
    assert tiny.model == "tiny-rn-32"
    with pytest.raises(ConfigError, match="unknown key"):
        load_preset("tiny", overrides=["learning_rate=1"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("huge")


def test_budget_modes() -> None:
    p = load_preset("tiny")
    one = plan_budget("one_epoch", 1000, p)
    assert (one.samples_seen, one.chunks, one.samples_per_chunk, one.resampled) == (1000, 1, 1000, False)
    eq = plan_budget("equal_samples", 1000, p)
    assert (eq.samples_seen, eq.chunks, eq.resampled) == (p.samples_seen, p.checkpoints, True)
    assert eq.chunks * eq.samples_per_chunk >= p.samples_seen
    assert plan_budget("equal_samples", 50, p, samples_seen=4096).samples_per_chunk == 1024
    with pytest.raises(BudgetError, match="one_epoch fixes"):
        plan_budget("one_epoch", 1000, p, samples_seen=5000)
    with pytest.raises(BudgetError, match="less than one batch"):
        plan_budget("one_epoch", 50, p)
    with pytest.raises(BudgetError, match="unknown budget mode"):
        plan_budget("two_epochs", 1000, p)


def test_shards_contract(shapes: Path, tmp_path: Path) -> None:
    s = open_shards(shapes)
    assert s.num_samples == 600 and s.url_spec() == f"{shapes}/{{00000..00003}}.tar"
    assert s.manifest() is None
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.tar").write_bytes((shapes / "00000.tar").read_bytes())
    (bad / "00002.tar").write_bytes((shapes / "00001.tar").read_bytes())
    with pytest.raises(ShardError, match=r"no sizes\.json"):
        open_shards(bad)
    (bad / "sizes.json").write_text(json.dumps({"00000.tar": 150}))
    with pytest.raises(ShardError, match="not listed"):
        open_shards(bad)
    (bad / "sizes.json").write_text(json.dumps({"00000.tar": 150, "00002.tar": 150}))
    (bad / "subset.json").write_text(json.dumps({"count": 300}))
    gappy = open_shards(bad)
    assert gappy.url_spec() == f"{bad}/00000.tar::{bad}/00002.tar"
    assert gappy.manifest() == {"file": "subset.json", "count": 300}


def test_openclip_arguments_follow_preset_and_budget(shapes: Path, tmp_path: Path) -> None:
    plan = make_plan(tiny_request(shapes, tmp_path / "r", samples_seen=4096))
    args = openclip_args(plan)
    opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert opt["--train-num-samples"] == "1024" and opt["--epochs"] == "4" and opt["--batch-size"] == "64"
    assert opt["--model"] == "tiny-rn-32" and opt["--resume"] == "latest" and opt["--seed"] == "0"
    assert "--dataset-resampled" in args and "--save-most-recent" in args
    one = openclip_args(make_plan(tiny_request(shapes, tmp_path / "r", mode="one_epoch", samples_seen=None)))
    assert "--dataset-resampled" not in one and one[one.index("--train-num-samples") + 1] == "600"
    with pytest.raises(TrainError, match="split evenly"):
        make_plan(tiny_request(shapes, tmp_path / "r", gpus=3))
    with pytest.raises(TrainError, match="needs CUDA"):
        check_launchable(make_plan(tiny_request(shapes, tmp_path / "r", gpus=2)))


def test_run_dir_refuses_other_plans(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert prepare_run_dir(make_plan(tiny_request(shapes, out))) is False
    assert prepare_run_dir(make_plan(tiny_request(shapes, out))) is True  # same plan: resume
    with pytest.raises(TrainError, match="different plan"):
        prepare_run_dir(make_plan(tiny_request(shapes, out, seed=1)))
    (out / "run.json").write_text("{}")
    with pytest.raises(TrainError, match="finished run"):
        prepare_run_dir(make_plan(tiny_request(shapes, out)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="not a run directory"):
        prepare_run_dir(make_plan(tiny_request(shapes, other)))


def test_open_clip_train_log_lines() -> None:
    line = (
        "2026-11-22,08:12:57 | INFO | Train Epoch: 1 [1024/1024 (100%)] Data (t): 0.012 Batch (t): 1.797, "
        "86.6262/s, 86.6262/s/gpu LR: 0.001973 Logit Scale: 14.239 Contrastive_loss: 4.6864 (4.8027) "
        "Loss: 4.6864 (4.8027)"
    )
    step = parse_line(line)
    assert step is not None and (step.epoch, step.done, step.total) == (1, 1024, 1024)
    assert (step.loss, step.loss_avg, step.lr, step.samples_per_s) == (4.6864, 4.8027, 0.001973, 86.6262)
    assert parse_line("2026 | INFO | Start epoch 1") is None
    earlier = line.replace("Epoch: 1 [1024/1024 (100%)]", "Epoch: 0 [ 512/1024 (50%)]")
    summary = summarize([earlier, earlier.replace("[ 512", "[1024"), earlier, line])  # epoch 0 re-run
    assert (summary.samples_seen, summary.epochs, summary.final_loss) == (2048, 2, 4.6864)


def test_seeded_shuffle_depends_on_seed_and_epoch() -> None:
    class Epoch:
        def __init__(self, value: int) -> None:
            self.value = value

        def get_value(self) -> int:
            return self.value

    def order(seed: int, epoch: int) -> list[int]:
        return list(EpochSeededShuffle(50, 20, seed, Epoch(epoch)).run(iter(range(100))))

    assert order(0, 0) == order(0, 0) and sorted(order(0, 0)) == list(range(100))
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    torch_draws = []
    for _ in range(2):
        EpochSeededShuffle(50, 20, 3, Epoch(2)).run(iter(range(5)))
        torch_draws.append(torch.rand(3))  # augmentations in this worker draw from the reseeded RNG
    assert torch.equal(*torch_draws)


def test_supervised_accounts_for_unusable_samples() -> None:
    register_project_models()
    _, preprocess, _ = open_clip.create_model_and_transforms(TINY_MODEL)
    to_example = ToExample(preprocess, num_classes=6, image_size=(32, 32))
    buf = io.BytesIO()
    make_samples(1, seed=0)[0]["image"].save(buf, format="JPEG")
    jpg = buf.getvalue()
    samples = [
        {"jpg": jpg, "cls": b"3"},
        {"jpg": jpg},  # no label
        {"jpg": jpg, "cls": b"99"},  # outside the class list
        {"jpg": jpg, "cls": b"cat"},
        {"cls": b"1"},  # no image
        {"png": b"not an image", "cls": b"1"},
    ]
    examples = [to_example(s) for s in samples]
    assert [e[1] for e in examples] == [3, -1, -2, -2, -3, -4]
    assert all(e[0].shape == (3, 32, 32) for e in examples)
    counts: Counter[str] = Counter()
    _count(counts, torch.tensor([e[1] for e in examples]))
    assert counts["seen"] == 6 and counts["trained"] == 1
    assert {k: v for k, v in counts.items() if k.startswith("dropped_")} == {
        f"dropped_{DROP_REASONS[-1]}": 1, f"dropped_{DROP_REASONS[-2]}": 2,
        f"dropped_{DROP_REASONS[-3]}": 1, f"dropped_{DROP_REASONS[-4]}": 1,
    }  # fmt: skip


def test_load_run_rejects_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"no run\.json"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="no such"):
        load_run(tmp_path / "nothing")
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, bare)
    with pytest.raises(RunError, match="no model name"):
        load_run(bare)
    clip = tmp_path / "clip"
    clip.mkdir()
    torch.save({"state_dict": {}, "kind": "clip", "model": TINY_MODEL}, clip / "checkpoint.pt")
    (clip / "run.json").write_text(
        json.dumps({"kind": "clip", "model": TINY_MODEL, "checkpoint": "checkpoint.pt"})
    )
    assert load_run(clip / "checkpoint.pt").run_dir == clip
    with pytest.raises(RunError, match="not a supervised"):
        load_supervised(clip)


def test_cli_print_command_and_bad_input(shapes: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.app import app

    runner = CliRunner()
    res = runner.invoke(
        app,
        ["train", str(shapes), "--out", str(tmp_path / "r"), "--preset", "small", "--mode", "equal_samples",
         "--gpus", "8", "--print-command"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "torch.distributed.run" in res.output and "--nproc_per_node=8" in res.output
    assert "trainer.openclip_entry" in res.output and "--batch-size 512" in res.output
    assert "--device cuda" in res.output
    assert "--train-num-samples 2560000" in res.output and "--local-loss" in res.output
    assert (tmp_path / "r" / "plan.json").exists() and not (tmp_path / "r" / "openclip").exists()
    bad = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2


def test_tar_fixture_follows_training_shard_contract(shapes: Path) -> None:
    sizes = json.loads((shapes / "sizes.json").read_text())
    with tarfile.open(shapes / "00000.tar") as tar:
        names = tar.getnames()
    keys = {n.rsplit(".", 1)[0] for n in names}
    assert len(keys) == sizes["00000.tar"]
    assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "txt", "json", "cls"}
