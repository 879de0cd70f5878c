"""The score stage: exact scores, checkpoints by path, bad samples, resume, side-by-side models, CLI."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import Compose, ToTensor
from typer.testing import CliRunner

from curation.core.config import ConfigError
from curation.core.models import register_project_models
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.core.workerslot import WorkerSlot, worker_slot
from curation.engines import run_job
from curation.engines.local import _init_worker
from curation.scoring import ModelLoadError, ScoreConfig, ScoreJob, loader, score_pool
from curation.scoring import job as score_job
from curation.scoring.encode import PairEncoder, encode_batches
from curation.scoring.loader import (
    IMAGE_DECODE_ERROR,
    IMAGE_OK,
    ImagePrep,
    LoaderSettings,
    PairCollate,
    PairDecoder,
    PreprocessError,
    pair_loader,
)
from curation.scoring.model import ModelSpec, resolve_devices
from pipelines.app import app
from tests.image_pool import draw, jpeg, write_image_pool

COLUMN = "clip_score_tiny_vit"


def save_tiny_checkpoint(path: Path, seed: int) -> Path:
    """A randomly initialised tiny CLIP, saved the way open_clip loads checkpoints by path."""
    register_project_models()
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-vit")
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A job's setup() sets the process's torch threads (it owns its worker); undo that per test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_image_pool(tmp_path / "pool", n_shards=2, per_shard=12, failed_every=6)


def config(pretrained: Path, **kw: object) -> ScoreConfig:
    base = {"model": "tiny-vit", "pretrained": str(pretrained), "device": "cpu", "batch_size": 5}
    return ScoreConfig.model_validate({**base, "loader_workers": 2, **kw})


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Members of a tar by key, read with tarfile alone (independent of the stage's reader)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            out.setdefault(key, {})[ext] = f.read()
    return out


def reference_scores(pool: Path, model_name: str, pretrained: str) -> dict[str, tuple[float, np.ndarray]]:
    """Scores by uid computed one sample at a time straight from open_clip: the ground truth."""
    register_project_models()
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    out = {}
    for shard in Pool(pool).shard_ids():
        for files in tar_samples(pool / f"{shard}.tar").values():
            image = preprocess(Image.open(io.BytesIO(files["jpg"]))).unsqueeze(0)
            with torch.no_grad():
                img = model.encode_image(image)
                txt = model.encode_text(tokenizer([files["txt"].decode()]))
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            uid = json.loads(files["json"])["uid"]
            out[uid] = (float((img * txt).sum()), img[0].numpy())
    return out


def test_scores_equal_an_independent_open_clip_computation(pool, ckpt):
    report = score_pool(pool, config(ckpt))
    assert not report.failed
    table = Pool(pool).read_attributes(COLUMN)
    expected = reference_scores(pool, "tiny-vit", str(ckpt))
    assert sorted(table["uid"].to_pylist()) == sorted(expected)
    for uid, score, emb in zip(*(table[c].to_pylist() for c in ("uid", COLUMN, "image_emb")), strict=True):
        assert score == pytest.approx(expected[uid][0], abs=1e-4)
        np.testing.assert_allclose(np.array(emb, np.float32), expected[uid][1], atol=2e-3)  # stored as fp16
    assert len(set(table[COLUMN].to_pylist())) > 1  # not a constant
    assert table.schema.field("image_emb").type == pa.list_(pa.float16(), 64)
    assert table[f"{COLUMN}_reason"].null_count == table.num_rows


def test_batched_tensor_steps_equal_the_model_preprocess_exactly():
    register_project_models()
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-vit")
    prep = ImagePrep.from_preprocess(preprocess, (64, 64))
    rng = np.random.default_rng(0)
    images = [draw(rng, "red", "circle", 64), draw(rng, "blue", "square", 200).resize((200, 90))]
    batch = torch.from_numpy(np.stack([np.asarray(prep.pil_steps(im)) for im in images]))
    assert batch.dtype == torch.uint8
    assert torch.equal(prep.to_model_input(batch), torch.stack([preprocess(im) for im in images]))
    with pytest.raises(PreprocessError, match="expected"):
        ImagePrep.from_preprocess(Compose([ToTensor()]), (64, 64))


def test_jpeg_draft_decodes_exactly_up_to_twice_the_input_and_close_above(tmp_path, ckpt):
    register_project_models()
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-vit")
    prep = ImagePrep.from_preprocess(preprocess, (64, 64))
    rng = np.random.default_rng(1)
    for side in (48, 64, 100, 128, 255):  # shorter than 2 x 128 px: no DCT scaling, bit-identical
        sample = {"__key__": "k", "jpg": jpeg(draw(rng, "red", "circle", side))}
        exact, drafted = PairDecoder(prep).image(sample)[0], PairDecoder(prep, 2).image(sample)[0]
        np.testing.assert_array_equal(drafted, exact)
    sample = {"__key__": "k", "jpg": jpeg(draw(rng, "red", "circle", 512))}
    exact, half, full = (PairDecoder(prep, d).image(sample)[0].astype(int) for d in (None, 2, 1))
    assert 0 < np.abs(half - exact).mean() < np.abs(full - exact).mean() < 8  # reduced scale, close

    root = write_image_pool(tmp_path / "pool", n_shards=1, per_shard=6, image_size=256)
    scores = {}
    for draft in (None, 2, 1):
        column = f"draft_{draft or 0}"
        score_pool(root, config(ckpt, embeddings=False, jpeg_draft=draft, column=column))
        scores[draft] = Pool(root).read_attributes(column)[column].to_numpy()
        meta = pq.read_schema(root / "attributes" / column / "00000.parquet").metadata[b"curation.score"]
        assert json.loads(meta)["jpeg_draft"] == draft
    assert not np.isnan(scores[2]).any()
    np.testing.assert_allclose(scores[2], scores[None], atol=0.005)  # 1/2 scale, then bicubic
    np.testing.assert_allclose(scores[1], scores[None], atol=0.02)  # 1/4 scale instead of bicubic


def test_jpegs_decode_on_torchvision_close_to_pil_and_the_rest_on_pil():
    """The JPEG fast path (torchvision decode + uint8 resize) stays within rounding of PIL's pixels;
    DCT-scaled, CMYK, PNG and corrupt images go through PIL exactly as before."""
    register_project_models()
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-vit")
    prep = ImagePrep.from_preprocess(preprocess, (64, 64))
    assert prep.tensor_steps is not None
    rng = np.random.default_rng(3)

    def with_pil(data: bytes, draft: int | None) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            if draft:
                img.draft("RGB", (draft * 64, draft * 64))
            return np.asarray(prep.pil_steps(loader.to_rgb(img)))

    sides = (63, 256, 517, 1030)
    images = [draw(rng, "red", "circle", side).resize((side, side * 3 // 4 + 1)) for side in sides]
    images += [images[2].convert("L"), images[2].convert("CMYK")]
    for img in images:
        data = jpeg(img)
        for draft in (None, 1, 2):
            decoder = PairDecoder(prep, draft)
            got, status = decoder.image({"__key__": "k", "jpg": data})
            assert status == IMAGE_OK
            with Image.open(io.BytesIO(data)) as header:
                on_tensors = decoder.tensor_path(header)
            assert on_tensors == (img.mode != "CMYK" and (not draft or decoder.draft_scale(img.size) == 1))
            diff = np.abs(got.astype(int) - with_pil(data, draft).astype(int))
            if on_tensors:
                assert diff.max() <= 2 and diff.mean() < 0.5, (img.mode, img.size, draft)  # rounding
            else:
                assert diff.max() == 0, (img.mode, img.size, draft)
    png = io.BytesIO()
    images[1].save(png, format="PNG")
    np.testing.assert_array_equal(
        PairDecoder(prep).image({"jpg": png.getvalue()})[0], with_pil(png.getvalue(), None)
    )
    truncated = {"__key__": "k", "jpg": jpeg(images[2])[:2000]}
    assert PairDecoder(prep).image(truncated)[1] == IMAGE_DECODE_ERROR
    wrong_size = ImagePrep.from_preprocess(preprocess, (32, 32))  # a bug, not a bad sample: it must raise
    with pytest.raises(PreprocessError, match="shape"):
        PairDecoder(wrong_size).image({"__key__": "k", "jpg": jpeg(images[1])})


def test_loader_ramps_batches_up_and_delivers_every_sample_once(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "FIRST_BATCH", 2)
    tar = write_image_pool(tmp_path / "pool", n_shards=1, per_shard=30, image_size=32) / "00000.tar"
    register_project_models()
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-vit")
    decode = PairDecoder(ImagePrep.from_preprocess(preprocess, (64, 64)))
    collate = PairCollate(open_clip.get_tokenizer("tiny-vit"))
    expected = sorted(tar_samples(tar))
    for workers in (0, 2):
        batches = list(pair_loader(tar, decode, collate, LoaderSettings(5, workers, 2, False)))
        sizes = [len(b.keys) for b in batches]
        keys = sorted(k for b in batches for k in b.keys)
        assert keys == expected, workers
        assert all(b.images.shape[0] == len(b.keys) == b.tokens.shape[0] for b in batches)
        per_worker = sizes if workers == 0 else sizes[::2]  # the loader alternates between workers
        assert per_worker == ([2, 4, 5, 5, 5, 5, 4] if workers == 0 else [2, 4, 5, 4]), sizes


def test_auto_loader_workers_and_threads_share_the_cores(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    monkeypatch.setattr(score_job, "_cores", lambda: 16)
    assert score_job.default_loader_workers(1, cpu) == 1 and score_job.default_threads(1, 1) == 15
    assert score_job.default_loader_workers(2, gpu) == 7  # two GPUs: 8 cores each, one feeds the GPU
    monkeypatch.setattr(score_job, "_cores", lambda: 2)
    assert score_job.default_loader_workers(1, cpu) == 1 and score_job.default_threads(1, 1) == 1
    monkeypatch.setattr(score_job, "_cores", lambda: 1)
    assert score_job.default_loader_workers(1, cpu) == 0 and score_job.default_threads(1, 0) == 1
    assert score_job.default_loader_workers(1, gpu) == 1


def test_bf16_autocast_on_cpu_scores_close_to_fp32(pool, ckpt):
    score_pool(pool, config(ckpt, embeddings=False))
    score_pool(pool, config(ckpt, embeddings=False, precision="bf16", column="bf16"))
    p = Pool(pool)
    fp32, bf16 = p.read_attributes(COLUMN)[COLUMN].to_numpy(), p.read_attributes("bf16")["bf16"].to_numpy()
    np.testing.assert_allclose(bf16, fp32, atol=0.03)
    assert not np.array_equal(bf16, fp32)  # autocast really ran in bf16
    meta = json.loads(
        pq.read_schema(pool / "attributes" / "bf16" / "00000.parquet").metadata[b"curation.score"]
    )
    assert meta["precision"] == "bf16"


def test_checkpoint_loaded_by_path_scores_like_the_model_in_memory(pool, tmp_path):
    torch.manual_seed(7)
    register_project_models()
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-vit")
    model.eval()
    path = tmp_path / "seed7.pt"
    torch.save({"state_dict": model.state_dict()}, path)

    score_pool(pool, config(path, embeddings=False))
    table = Pool(pool).read_attributes(COLUMN)
    assert "image_emb" not in table.column_names

    prep = ImagePrep.from_preprocess(preprocess, (64, 64))
    encoder = PairEncoder(model, prep, torch.device("cpu"), "fp32")
    encoder.warm_up(32)
    decode = PairDecoder(prep)
    collate = PairCollate(open_clip.get_tokenizer("tiny-vit"))
    in_memory = {}
    for shard in Pool(pool).shard_ids():
        loader = pair_loader(pool / f"{shard}.tar", decode, collate, LoaderSettings(4, 0, 1, False))
        enc = encode_batches(encoder, loader, embeddings=False)
        in_memory.update(zip(enc.keys, enc.score.tolist(), strict=True))
    rows = pa.concat_tables(Pool(pool).read_samples(s) for s in Pool(pool).shard_ids())
    by_uid = dict(zip(table["uid"].to_pylist(), table[COLUMN].to_pylist(), strict=True))
    for key, uid in zip(rows["key"].to_pylist(), rows["uid"].to_pylist(), strict=True):
        assert by_uid[uid] == pytest.approx(in_memory[key], abs=1e-6)


def test_bad_samples_get_a_reason_and_the_rest_of_the_shard_is_scored(tmp_path, ckpt):
    root = write_image_pool(
        tmp_path / "pool",
        n_shards=1,
        per_shard=16,
        corrupt={"000000003"},
        empty_caption={"000000002"},
        no_caption_file={"000000007"},
        failed_every=5,
    )
    # a row the parquet calls downloaded but whose sample the tar lacks
    rows = pq.read_table(root / "00000.parquet").to_pylist()
    rows.append({**rows[0], "key": "000000099", "uid": "f" * 32})
    pq.write_table(pa.Table.from_pylist(rows), root / "00000.parquet")

    report = score_pool(root, config(ckpt))
    assert not report.failed
    table = Pool(root).read_attributes(COLUMN)
    successes = Pool(root).read_samples("00000")
    assert table.num_rows == successes.num_rows == 14  # 16 urls - 3 failed + 1 listed but absent
    by_key = dict(zip(successes["key"].to_pylist(), table.to_pylist(), strict=True))
    expected = {
        "000000003": "decode_error",
        "000000002": "missing_caption",
        "000000007": "missing_caption",
        "000000099": "missing_image",
    }
    for key, row in by_key.items():
        assert row[f"{COLUMN}_reason"] == expected.get(key)
        assert (row[COLUMN] is None) == (key in expected)
    assert by_key["000000003"]["image_emb"] is None and by_key["000000003"]["text_emb"] is not None
    assert by_key["000000002"]["text_emb"] is None and by_key["000000002"]["image_emb"] is not None

    funnel = Funnel(report.stats)
    funnel.check()
    (stage,) = funnel.stages
    assert stage.stage == "score"
    assert stage.total.seen == 14 and stage.total.kept == 10
    assert dict(stage.total.dropped) == {"decode_error": 1, "missing_caption": 2, "missing_image": 1}
    assert sum(c.seen for c in stage.by_source.values()) == 14


def test_rerun_skips_finished_shards_and_two_models_score_side_by_side(pool, ckpt, tmp_path):
    first = score_pool(pool, config(ckpt, embeddings=False))
    again = score_pool(pool, config(ckpt, embeddings=False))
    assert {o.status for o in first.outcomes} == {"done"}
    assert {o.status for o in again.outcomes} == {"skipped"}
    assert [s.to_dict() for s in again.stats] == [s.to_dict() for s in first.stats]

    other = save_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(ConfigError, match="another --column"):
        score_pool(pool, config(other))  # same column, other weights: refused, not mixed
    score_pool(pool, config(other, column="clip_score_tiny_other", embeddings=False))

    p = Pool(pool)
    a, b = p.read_attributes(COLUMN), p.read_attributes("clip_score_tiny_other")
    joined = a.join(b.select(["uid", "clip_score_tiny_other"]), "uid")
    assert joined.num_rows == a.num_rows == b.num_rows
    assert not np.allclose(joined[COLUMN].to_numpy(), joined["clip_score_tiny_other"].to_numpy())


def test_a_shard_that_fails_is_redone_by_the_next_run(pool, ckpt):
    job = ScoreJob(pool, config(ckpt, embeddings=False))
    job.prepare()
    (pool / "00001.tar").rename(pool / "00001.tar.away")
    report = run_job(job, "local", retries=0)
    assert [o.status for o in report.outcomes] == ["done", "failed"]
    assert "00001.tar is missing" in (report.failed[0].error or "")
    (pool / "00001.tar.away").rename(pool / "00001.tar")
    assert [o.status for o in run_job(job, "local").outcomes] == ["skipped", "done"]


def test_model_errors_are_clear_and_early(monkeypatch):
    with pytest.raises(ModelLoadError, match="neither an existing checkpoint file nor a pretrained tag"):
        ModelSpec("tiny-vit", "/no/such/file.pt").check()
    with pytest.raises(ModelLoadError, match="unknown model"):
        ModelSpec("ViT-X-99", "openai").check()
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without hub
    with pytest.raises(ModelLoadError, match="pass its path as --pretrained"):
        ModelSpec("ViT-B-32", "laion2b_s34b_b79k").fetch()


def test_engine_workers_get_distinct_slots_that_pick_devices(monkeypatch, ckpt, tmp_path):
    import multiprocessing as mp

    class Probe(ScoreJob):
        def setup(self) -> None:
            self.slot = worker_slot()

    for var in ("CURATION_WORKER_RANK", "CURATION_WORKER_COUNT"):
        monkeypatch.delenv(var, raising=False)
    assert worker_slot() == WorkerSlot(0, 1)
    counter = mp.get_context("spawn").Value("i", 0)
    pool = write_image_pool(tmp_path / "p", n_shards=1, per_shard=2)
    slots = []
    for _ in range(3):
        probe = Probe(pool, config(ckpt))
        _init_worker(probe, counter, 3)
        slots.append(probe.slot)
    assert slots == [WorkerSlot(0, 3), WorkerSlot(1, 3), WorkerSlot(2, 3)]
    devices = resolve_devices(config(ckpt, device="cpu,meta").device)  # as --device cpu,meta
    assert [str(devices[s.rank % len(devices)]) for s in slots] == ["cpu", "meta", "cpu"]


def test_cli_scores_a_pool(pool, ckpt):
    result = CliRunner().invoke(
        app,
        [
            "score", str(pool), "--model", "tiny-vit", "--pretrained", str(ckpt),
            "-c", "conf/score/tiny.yaml", "--device", "cpu", "--batch-size", "8", "--no-embeddings",
            "--set", "loader_workers=1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = Pool(pool).read_attributes(COLUMN)
    assert table.column_names == ["uid", "source", COLUMN, f"{COLUMN}_reason"]
    meta = json.loads(
        pq.read_schema(pool / "attributes" / COLUMN / "00000.parquet").metadata[b"curation.score"]
    )
    assert meta["precision"] == "fp32" and meta["device"] == "cpu"

    bad = CliRunner().invoke(
        app, ["score", str(pool), "-m", "tiny-vit", "-p", "no-such-tag", "--device", "cpu"]
    )
    assert bad.exit_code == 2 and "neither an existing checkpoint" in bad.output
    no_weights = CliRunner().invoke(app, ["score", str(pool), "-c", "conf/score/tiny.yaml"])
    assert isinstance(no_weights.exception, ConfigError) and "pass --pretrained" in str(no_weights.exception)


@pytest.mark.slow
def test_two_engine_workers_give_the_same_scores(pool, ckpt, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pool, copy)
    score_pool(pool, config(ckpt, embeddings=False))
    report = score_pool(copy, config(ckpt, embeddings=False, threads=1, loader_workers=0), workers=2)
    assert not report.failed
    a, b = Pool(pool).read_attributes(COLUMN), Pool(copy).read_attributes(COLUMN)
    np.testing.assert_allclose(a[COLUMN].to_numpy(), b[COLUMN].to_numpy(), atol=1e-6)
