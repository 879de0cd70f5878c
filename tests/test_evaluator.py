"""Evaluator tests: every metric is checked against a direct computation on the same images.

(Over 400 lines: one file per command; its tests share the suite fixtures.)
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from curation.core.models import load_clip, register_project_models
from pipelines.app import app
from tests.evalsuite_factory import CLASSNAMES, TEMPLATES, classification_samples, make_suite, write_test_set
from trainer.eval_config import EvalConfig
from trainer.evaluate import evaluate_test_set
from trainer.evaluatees import (
    ModelSource,
    ModelSourceError,
    SupervisedEvaluatee,
    load_evaluatee,
    resolve_source,
)
from trainer.suites import (
    SHIPPED_SUBSETS_DIR,
    Role,
    SuiteError,
    TestSetEntry,
    load_suite,
    load_test_set,
    read_index_file,
)
from trainer.zeroshot import classify, restrict_to_subset

MODEL = "tiny-vit"


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised (seeded) tiny-vit saved as a plain state dict."""
    register_project_models()
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def baseline_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "baselines.csv"
    rows = ["model,dataset,acc1", "b1,tiny_id,0.3", "b1,tiny_sketch,0.15", "b2,tiny_id,0.5"]
    rows += ["b2,tiny_sketch,0.3", "b3,tiny_id,0.7", "b3,tiny_sketch,0.45"]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def evaluated(suite_dir: Path, checkpoint: Path, baseline_csv: Path, tmp_path_factory):
    """Run ``curate evaluate`` once (2 workers, odd batch size) and return (out dir, records by dataset)."""
    out = tmp_path_factory.mktemp("eval")
    args = [
        "evaluate",
        str(checkpoint),
        "--model",
        MODEL,
        "--suite",
        str(suite_dir),
        "--out",
        str(out),
        "--batch-size",
        "5",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--baseline",
        str(baseline_csv),
        "--set",
        "bootstrap.samples=200",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return out, {r["dataset"]: r for r in records}


def read_test_split(root: Path, split: str = "test") -> dict[str, dict[str, bytes]]:
    """key ('0.tar/s0000001') -> {ext: bytes}, read with tarfile, independently of the evaluator."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard in sorted((root / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples[f"{shard.name}/{key}"][ext] = tar.extractfile(member).read()
    return dict(sorted(samples.items()))


def direct_image_features(bundle, samples: dict[str, dict[str, bytes]]) -> tuple[list[str], torch.Tensor]:
    keys, images = [], []
    for key, parts in samples.items():
        ext = next(e for e in ("jpg", "png", "webp") if e in parts)
        try:
            img = Image.open(io.BytesIO(parts[ext])).convert("RGB")
        except OSError:
            continue  # the deliberately corrupt sample
        keys.append(key)
        images.append(bundle.preprocess(img))
    with torch.no_grad():
        return keys, F.normalize(bundle.model.encode_image(torch.stack(images)), dim=-1)


def direct_classifier(bundle, classnames, templates) -> torch.Tensor:
    """Per class: encode each template, normalise, average, normalise again (by hand)."""
    columns = []
    with torch.no_grad():
        for c in classnames:
            tokens = bundle.tokenizer([t.replace("{c}", c) for t in templates])
            emb = F.normalize(bundle.model.encode_text(tokens), dim=-1).mean(0)
            columns.append(emb / emb.norm())
    return torch.stack(columns, dim=1)


@pytest.fixture(scope="module")
def bundle(checkpoint: Path):
    return load_clip(MODEL, str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def clip_ev(checkpoint: Path):
    return load_evaluatee(
        ModelSource("clip", MODEL, str(checkpoint), "t"), EvalConfig(device="cpu", workers=0)
    )


@pytest.mark.parametrize("dataset", ["tiny_id", "tiny_sketch"])
def test_zero_shot_matches_direct_computation(evaluated, bundle, suite_dir: Path, dataset: str) -> None:
    out, records = evaluated
    record = records[dataset]
    samples = read_test_split(suite_dir / dataset)
    keys, feats = direct_image_features(bundle, samples)
    labels = np.array([int(samples[k]["cls"]) for k in keys])
    logits = feats @ direct_classifier(bundle, CLASSNAMES, TEMPLATES)
    top5 = torch.topk(logits, 5, dim=1).indices.numpy()
    pred = top5[:, 0]

    stored = np.load(out / record["samples"])
    assert stored["keys"].tolist() == keys
    assert np.array_equal(stored["topk"], top5)
    assert record["n"] == len(keys)
    assert record["metrics"]["acc1"] == pytest.approx(np.mean(pred == labels), abs=1e-12)
    assert record["metrics"]["acc5"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)), abs=1e-12)
    expected_mpcr = balanced_accuracy_score(labels, pred)
    assert record["metrics"]["mean_per_class_recall"] == pytest.approx(expected_mpcr, abs=1e-12)
    lo, hi = record["ci"]["acc1"]
    assert lo <= record["metrics"]["acc1"] <= hi


def test_every_sample_is_accounted_for(evaluated) -> None:
    _, records = evaluated
    assert records["tiny_id"]["skipped"] == {}
    assert records["tiny_id"]["n"] == 36
    assert records["tiny_sketch"]["skipped"] == {"undecodable_image": 1}
    assert records["tiny_sketch"]["n"] == 24


def test_retrieval_recall_matches_direct_computation(evaluated, bundle, suite_dir: Path) -> None:
    _, records = evaluated
    record = records["tiny_retrieval"]
    samples = read_test_split(suite_dir / "tiny_retrieval")
    keys, img = direct_image_features(bundle, samples)
    captions, owner = [], []
    for i, key in enumerate(keys):
        for cap in samples[key]["txt"].decode().splitlines():
            captions.append(cap)
            owner.append(i)
    with torch.no_grad():
        txt = F.normalize(bundle.model.encode_text(bundle.tokenizer(captions)), dim=-1)
    sims = (txt @ img.T).numpy()
    owner = np.array(owner)
    for k in (1, 5, 10):
        image_hits = [owner[j] in np.argsort(-sims[j])[:k] for j in range(len(captions))]
        text_hits = [(owner[np.argsort(-sims[:, i])[:k]] == i).any() for i in range(len(keys))]
        metrics = record["metrics"]
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(np.mean(image_hits), abs=1e-12)
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(np.mean(text_hits), abs=1e-12)
    assert record["n_captions"] == len(captions)
    assert record["task"] == "zeroshot_retrieval"


def test_cli_writes_results_csv_and_robustness(evaluated) -> None:
    out, records = evaluated
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    expected = {"dataset", "model", "task", "role", "acc1", "acc5", "mean_per_class_recall", "acc1_ci_low"}
    assert expected <= set(header)
    assert set(records) == {"tiny_id", "tiny_sketch", "tiny_retrieval"}
    assert records["tiny_id"]["role"] == "in_distribution" and records["tiny_sketch"]["role"] == "shift"
    report = json.loads((out / "robustness.json").read_text())
    assert report["id_dataset"] == "tiny_id" and report["shifts"] == ["tiny_sketch"]
    (point,) = [p for p in report["models"] if p["shift"] == "tiny_sketch"]
    assert point["acc_id"] == records["tiny_id"]["metrics"]["acc1"]
    assert (out / "effective_robustness.png").stat().st_size > 10_000


# ------------------------------------------------------------------ class subsets


def test_class_subset_restricts_argmax_to_a_200_class_like_subset() -> None:
    subset = read_index_file(SHIPPED_SUBSETS_DIR / "imagenet-a.txt")
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(300, 1000)).astype(np.float32))
    labels = rng.choice(subset, size=300)
    result = classify(logits, labels, subset)
    allowed = np.asarray(subset)
    assert np.isin(result.topk, allowed).all()
    restricted = logits.numpy()[:, allowed]
    assert np.array_equal(result.topk[:, 0], allowed[restricted.argmax(1)])
    expected_top5 = allowed[np.argsort(-restricted, axis=1)[:, :5]]
    assert np.array_equal(result.topk, expected_top5)
    # unrestricted, most argmaxes fall outside the 200 classes: the mask is doing the work
    assert not np.isin(logits.numpy().argmax(1), allowed).all()
    masked = restrict_to_subset(logits, subset)
    assert torch.isinf(masked[:, np.setdiff1d(np.arange(1000), allowed)]).all()


def test_shipped_subsets_match_timm_synsets() -> None:
    info = Path(__import__("timm").__file__).parent / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    for name in ("imagenet-a", "imagenet-r"):
        wnids = (info / f"imagenet_{name[-1]}_synsets.txt").read_text().split()
        shipped = read_index_file(SHIPPED_SUBSETS_DIR / f"{name}.txt")
        assert len(shipped) == 200
        assert shipped == sorted(synsets.index(w) for w in wnids)


@pytest.mark.parametrize("spec", [[1, 3, 4], "subset.txt"])
def test_class_subset_in_suite_yaml(tmp_path: Path, clip_ev, spec) -> None:
    labels = [1, 3, 4] * 4
    write_test_set(tmp_path / "sub", classification_samples(labels))
    (tmp_path / "subset.txt").write_text("# three of six classes\n1\n3\n4\n")
    entry = TestSetEntry(name="sub", path="sub", role=Role.IN_DISTRIBUTION, class_subset=spec)
    test_set = load_test_set(tmp_path / "sub", entry, suite_root=tmp_path)
    assert test_set.class_subset == (1, 3, 4)
    ev = clip_ev
    (outcome,) = evaluate_test_set(ev, test_set, EvalConfig(device="cpu", workers=0, batch_size=8))
    topk = outcome.arrays["topk"]
    assert topk.shape == (12, 3) and np.isin(topk, [1, 3, 4]).all()
    # same as a direct restricted argmax
    samples = read_test_split(tmp_path / "sub")
    _, feats = direct_image_features(ev.bundle, samples)
    logits = (feats @ direct_classifier(ev.bundle, CLASSNAMES, TEMPLATES)).numpy()
    assert np.array_equal(topk[:, 0], np.array([1, 3, 4])[logits[:, [1, 3, 4]].argmax(1)])


# ------------------------------------------------------------------ malformed suites


def _mutate_suite(root: Path, change: str) -> None:
    spec = yaml.safe_load((root / "suite.yaml").read_text())
    if change == "bad_role":
        spec["test_sets"][1]["role"] = "ood"
    elif change == "unknown_key":
        spec["test_sets"][0]["rol"] = "shift"
    elif change == "missing_path":
        spec["test_sets"][0]["path"] = "nowhere"
    elif change == "two_id":
        spec["test_sets"][1]["role"] = "in_distribution"
    elif change == "no_id":
        spec["test_sets"][0]["role"] = "shift"
    elif change == "duplicate":
        spec["test_sets"][1]["name"] = "tiny_id"
    elif change == "subset_range":
        spec["test_sets"][0]["class_subset"] = [0, 6]
    elif change == "no_test_sets":
        spec["test_sets"] = []
    elif change == "no_classnames":
        (root / "tiny_id" / "classnames.txt").unlink()
    elif change == "bad_template":
        (root / "tiny_id" / "zeroshot_classification_templates.txt").write_text("a photo of a thing\n")
    elif change == "nshards":
        (root / "tiny_id" / "test" / "nshards.txt").write_text("3\n")
    elif change == "multilabel":
        (root / "tiny_id" / "dataset_type.txt").write_text("multilabel\n")
    elif change == "yaml":
        (root / "suite.yaml").write_text("name: [unclosed\n")
        return
    (root / "suite.yaml").write_text(yaml.safe_dump(spec))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("bad_role", "role"),
        ("unknown_key", "rol: unknown key"),
        ("missing_path", "directory does not exist"),
        ("two_id", "2 test sets have role in_distribution"),
        ("no_id", "need one test set with role in_distribution"),
        ("duplicate", "duplicate test set names: tiny_id"),
        ("subset_range", r"class_subset indices must lie in \[0, 6\)"),
        ("no_test_sets", "test_sets"),
        ("no_classnames", "missing classnames.txt"),
        ("bad_template", "placeholder"),
        ("nshards", "says 3 shards but 2.tar missing"),
        ("yaml", "not valid YAML"),
        ("multilabel", "dataset_type 'multilabel' is not supported"),
    ],
)
def test_malformed_suite_gives_clear_error(tmp_path: Path, change: str, message: str) -> None:
    root = make_suite(tmp_path, corrupt_in_shift=False)
    load_suite(root)  # valid before the change
    _mutate_suite(root, change)
    with pytest.raises(SuiteError, match=message):
        load_suite(root)


def test_single_test_set_dir_and_cli_error(tmp_path: Path, suite_dir: Path) -> None:
    suite = load_suite(suite_dir / "tiny_retrieval")
    assert [(t.name, t.role) for t in suite.test_sets] == [("tiny_retrieval", Role.RETRIEVAL)]
    with pytest.raises(SuiteError, match="neither a suite"):
        load_suite(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            MODEL,
            "--suite",
            "synthetic",
            "--set",
            f"suites.synthetic={tmp_path / 'not_generated'}",
        ],
    )
    assert result.exit_code == 2
    assert "curate synth" in result.output


# ------------------------------------------------------------------ model sources


def test_resolve_source_from_run_dir_and_errors(tmp_path: Path, checkpoint: Path) -> None:
    run = tmp_path / "run-42"
    run.mkdir()
    info = {"kind": "clip", "model": MODEL, "checkpoint": "ckpt/epoch_1.pt"}
    (run / "run.json").write_text(json.dumps(info))
    src = resolve_source(str(run), None, None)
    assert (src.kind, src.model, src.label) == ("clip", MODEL, "run-42")
    assert src.pretrained == str(run / "ckpt/epoch_1.pt")
    assert resolve_source(str(checkpoint), MODEL, None).pretrained == str(checkpoint)
    with pytest.raises(ModelSourceError, match="--model NAME is required"):
        resolve_source(str(checkpoint), None, None)
    with pytest.raises(ModelSourceError, match="not a run"):
        resolve_source(str(tmp_path), MODEL, None)
    (run / "run.json").write_text(json.dumps({"kind": "clip", "model": MODEL}))
    with pytest.raises(ModelSourceError, match="missing checkpoint"):
        resolve_source(str(run), None, None)


class _PixelHead(torch.nn.Module):
    """A small real classifier over mean colours, standing in for a trained supervised run."""

    def __init__(self, n: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(3, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def test_supervised_run_maps_head_classes_by_name(tmp_path: Path, suite_dir: Path, monkeypatch) -> None:
    head_names = ["Orange_Ring", "extra class", *reversed([c.upper() for c in CLASSNAMES[:5]])]
    module = _PixelHead(len(head_names))

    def preprocess(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.resize((16, 16)), dtype=np.float32) / 255).permute(2, 0, 1)

    fake = types.ModuleType("trainer.supervised")
    fake.load_supervised = lambda path: (module, preprocess, head_names)
    monkeypatch.setitem(sys.modules, "trainer.supervised", fake)
    ev = SupervisedEvaluatee(ModelSource("supervised", "pixelhead", None, "sup", tmp_path), "cpu")
    test_set = load_suite(suite_dir).test_sets[0]
    (outcome,) = evaluate_test_set(ev, test_set, EvalConfig(device="cpu", workers=0))

    samples = read_test_split(suite_dir / "tiny_id")
    images = [next(v for e, v in parts.items() if e != "cls") for parts in samples.values()]
    x = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    with torch.no_grad():
        head_logits = module(x)
    order = [
        head_names.index(n)
        for n in ["RED SQUARE", "GREEN CIRCLE", "BLUE TRIANGLE", "YELLOW CROSS", "PURPLE STAR", "Orange_Ring"]
    ]
    expected = head_logits[:, order].argmax(1).numpy()
    assert np.array_equal(outcome.arrays["topk"][:, 0], expected)
    assert evaluate_test_set(ev, load_suite(suite_dir).test_sets[2], EvalConfig(device="cpu")) == []


# ------------------------------------------------------------------ linear probe and label checks


def test_linear_probe_matches_direct_sklearn_fit(tmp_path: Path, suite_dir: Path, clip_ev) -> None:
    from sklearn.linear_model import LogisticRegression

    cfg = EvalConfig(device="cpu", workers=0, batch_size=16)
    cfg.linear_probe.enabled = True
    ev = clip_ev
    # a test set with its own train/ split: train there, score every test sample
    root = tmp_path / "with_train"
    write_test_set(root, classification_samples([i % 6 for i in range(12)], offset=300))
    train_labels = [i % 6 for i in range(24)]
    write_test_set(tmp_path / "train_src", classification_samples(train_labels, offset=400))
    (tmp_path / "train_src" / "test").rename(root / "train")
    test_set = load_test_set(root, TestSetEntry(name="wt", path=".", role=Role.IN_DISTRIBUTION))
    zero_shot, probe = evaluate_test_set(ev, test_set, cfg)
    assert probe.record["task"] == "linear_probe" and probe.record["probe_trained_on"] == "train split"

    test_keys, test_x = direct_image_features(ev.bundle, read_test_split(root))
    train = read_test_split(root, "train")
    train_keys, train_x = direct_image_features(ev.bundle, train)
    train_y = [int(train[k]["cls"]) for k in train_keys]
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(train_x.numpy(), train_y)
    test_y = np.array([int(read_test_split(root)[k]["cls"]) for k in test_keys])
    expected = clf.predict(test_x.numpy()) == test_y
    np.testing.assert_array_equal(probe.arrays["correct"], expected)
    assert probe.record["metrics"]["acc1"] == pytest.approx(expected.mean(), abs=1e-12)
    assert zero_shot.record["task"] == "zeroshot_classification"

    # no train split: a seeded, stratified half of the test split is held out
    (_, outcome_probe) = evaluate_test_set(ev, load_suite(suite_dir).test_sets[0], cfg)
    held = outcome_probe.arrays["labels"]
    assert len(held) == 18 and np.bincount(held).tolist() == [3] * 6
    assert "stratified split" in outcome_probe.record["probe_trained_on"]


def test_labels_outside_classnames_are_a_suite_error(tmp_path: Path, clip_ev) -> None:
    write_test_set(tmp_path / "bad", classification_samples([0, 1, 7]))
    test_set = load_test_set(tmp_path / "bad", TestSetEntry(name="bad", path=".", role=Role.SHIFT))
    with pytest.raises(SuiteError, match=r"labels \[7\] do not index classnames.txt \(6 classes\)"):
        evaluate_test_set(clip_ev, test_set, EvalConfig(device="cpu", workers=0))


def test_retrieval_ranks_break_ties_like_a_stable_sort() -> None:
    """Duplicate captions and duplicate images tie exactly; ranks follow a stable descending sort."""
    from trainer.retrieval import retrieval_ranks

    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(40, 8, generator=gen), dim=-1)
    img[7] = img[3]  # duplicate images
    owner = torch.arange(40).repeat_interleave(2)[:70]
    owner = torch.cat([owner, torch.arange(35, 40)])
    txt = F.normalize(torch.randn(len(owner), 8, generator=gen), dim=-1)
    txt[10] = txt[2]  # duplicate captions of different images
    txt[11] = txt[2]
    image_rank, text_rank = retrieval_ranks(img, txt, owner)
    sims = (txt @ img.T).numpy()
    for j in range(len(owner)):
        assert image_rank[j] == list(np.argsort(-sims[j], kind="stable")).index(int(owner[j]))
    for i in range(len(img)):
        order = np.argsort(-sims[:, i], kind="stable")
        assert text_rank[i] == int(np.flatnonzero(owner.numpy()[order] == i)[0])
