"""CLIP_benchmark interoperability: its own loader and metric on our synthetic retrieval set.

``clip_benchmark`` (a test-only dependency) reads the suite's ``synth_retrieval`` folder as a
webdataset retrieval set (``dataset_type.txt``) and computes recall@k with its own code; our
evaluator, given the same folder alone, must agree, and ``--clip-benchmark`` must write what its
``eval`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from curation.core.config import CONF_DIR, load_config
from curation.core.models import load_clip, register_project_models
from curation.synth.config import SynthConfig
from curation.synth.evalsets import build_suite
from curation.synth.pool import Workers
from trainer.eval_config import EvalConfig
from trainer.evaluate import evaluate_suite, write_clip_benchmark
from trainer.evaluatees import ModelSource, load_evaluatee
from trainer.suites import Role, load_suite

cb_builder = pytest.importorskip("clip_benchmark.datasets.builder")
cb_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

MODEL = "tiny-vit"


@pytest.fixture(scope="module")
def retrieval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    sets = ["suite.per_class=1", "suite.retrieval_pairs=60", "suite.shard_size=25", "workers=1"]
    with Workers(1) as workers:
        build_suite(load_config(SynthConfig, CONF_DIR / "synth" / "default.yaml", sets), out, workers)
    return out / "suite" / "synth_retrieval"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_project_models()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(open_clip.create_model(MODEL).state_dict(), path)
    return path


@pytest.mark.slow  # ~1 min on 2 busy cores: renders a small suite, runs two evaluators
def test_clip_benchmark_reads_our_retrieval_set_and_agrees_on_recall(retrieval_set, checkpoint, tmp_path):
    assert (retrieval_set / "dataset_type.txt").read_text().strip() == "retrieval"
    # ours, given the folder alone (no suite.yaml): the type file makes it a retrieval set
    suite = load_suite(retrieval_set)
    assert [t.role for t in suite.test_sets] == [Role.RETRIEVAL]
    cfg = EvalConfig(device="cpu", workers=0)
    ev = load_evaluatee(ModelSource("clip", MODEL, str(checkpoint), "t"), cfg)
    (ours,) = evaluate_suite(ev, suite, cfg, tmp_path / "eval")

    # clip_benchmark's loader and metric, as its `eval` runs a wds/ dataset
    bundle = load_clip(MODEL, str(checkpoint), device="cpu")
    dataset = cb_builder.build_dataset(
        "wds/synth_retrieval",
        root=str(retrieval_set),
        transform=bundle.preprocess,
        split="test",
        task="zeroshot_retrieval",
    )
    loader = torch.utils.data.DataLoader(dataset.batched(16), batch_size=None, shuffle=False, num_workers=0)
    theirs = cb_retrieval.evaluate(
        bundle.model, loader, bundle.tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )
    assert ours["n"] == 60
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5", "image_retrieval_recall@1"):
        assert abs(ours["metrics"][key] - theirs[key]) <= 1e-6, (key, ours["metrics"], theirs)
    assert 0 < theirs["image_retrieval_recall@5"] < 1  # a random model: neither trivial nor perfect

    # our records written in its layout, names and keys
    (path,) = write_clip_benchmark([ours], tmp_path / "cb")
    assert path.name == f"synth_retrieval_tiny.pt_{MODEL}_en_zeroshot_retrieval.json"
    dump = json.loads(path.read_text())
    assert set(dump) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert dump["dataset"] == "wds/synth_retrieval" and dump["language"] == "en"
    assert dump["metrics"] == ours["metrics"]
