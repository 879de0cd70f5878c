"""The self-supervised copy encoder (curation/filtering/copy_encoder.py) and copydesc's kind encoder."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from curation.core.config import CONF_DIR, ConfigError, load_config
from curation.core.pool import Pool
from curation.engines import run_job
from curation.filtering import copy_encoder as ce
from curation.filtering.copy_encoder import TrainEncoderConfig
from curation.filtering.copydesc import CopyDescConfig
from curation.filtering.copydesc_job import CopyDescJob
from curation.filtering.job import FilterJobConfig
from pipelines.app import app
from tests.selpools import write_image_pool


def textures(n: int, side: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` distinct low-frequency colour fields: pictures that differ in layout, not in class."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 1, (n, 3, 4, 4)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    return (fine.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def test_augment_is_seeded_and_keeps_shape_and_range():
    x = ce.to_tensor(textures(8))
    a = ce.augment(x, torch.Generator().manual_seed(1))
    b = ce.augment(x, torch.Generator().manual_seed(1))
    c = ce.augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x, atol=0.05)


def test_an_affine_colour_grade_cannot_move_the_embedding():
    """Per-image standardisation comes first, so contrast, tint and brightness move the embedding far
    less than another picture does (not exactly nothing: a floor on the std keeps flat pictures calm)."""
    model = ce.CopyEncoder(width=8, dim=16).eval()
    x = ce.to_tensor(textures(6)) * 0.6 + 0.2
    gain = torch.tensor([1.2, 0.9, 1.1]).view(1, 3, 1, 1)
    with torch.no_grad():
        same = model(x * gain + 0.05)
        other = model(x.flip(0))
        base = model(x)
    graded, swapped = (base - same).abs().max(), (base - other).abs().max()
    assert graded * 5 < swapped, (graded, swapped)


def test_training_makes_a_view_find_its_own_image():
    thumbs = textures(256)
    cfg = TrainEncoderConfig(width=8, dim=32, steps=150, batch=64, seed=0)
    g = torch.Generator().manual_seed(0)
    untrained = ce.view_top1(
        ce.CopyEncoder(8, 32).eval(), ce.to_tensor(thumbs), lambda v: ce.augment(v, g), g
    )
    fit = ce.fit_encoder(thumbs, cfg)
    assert len(fit.losses) == 10 and fit.losses[-1] < fit.losses[0]
    assert fit.view_top1 >= 0.8 > untrained, (fit.view_top1, untrained)
    with pytest.raises(ValueError, match="at least 2 images"):
        ce.fit_encoder(thumbs[:1], cfg)


def test_saved_encoder_embeds_like_the_model_locally_and_on_s3(tmp_path, s3):
    fit = ce.fit_encoder(textures(64), TrainEncoderConfig(width=8, dim=16, steps=3, batch=16))
    model = fit.model
    thumbs = textures(5)
    big = np.repeat(np.repeat(thumbs, 2, axis=1), 2, axis=2)  # another batch and size than traced
    with torch.no_grad():
        expected = model(ce.to_tensor(thumbs)).numpy()
        expected_big = model(ce.to_tensor(big)).numpy()
    for dest in (str(tmp_path / "enc.pt"), f"{s3.url}/encoders/enc.pt"):
        ce.save_encoder(model, dest, {"note": "test"})
        np.testing.assert_allclose(ce.embed(dest, thumbs), expected, atol=1e-5)
        np.testing.assert_allclose(ce.embed(dest, big), expected_big, atol=1e-5)
        assert ce.encoder_dim(dest, 32) == 16
    extra = {ce.META_FILE: ""}
    with warnings.catch_warnings():  # torch calls TorchScript deprecated; copy detectors still ship it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(tmp_path / "enc.pt"), _extra_files=extra)
    assert json.loads(extra[ce.META_FILE]) == {"note": "test"}


def test_a_missing_or_foreign_encoder_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        ce.load_encoder(str(tmp_path / "nowhere.pt"))
    state = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, state)
    with pytest.raises(ValueError, match=r"state\.pt is not a TorchScript module"):
        ce.load_encoder(str(state))


def test_kind_encoder_needs_an_encoder_and_nothing_else_takes_one():
    with pytest.raises(ValidationError, match="exactly when kind is encoder"):
        CopyDescConfig(kind="encoder")
    with pytest.raises(ValidationError, match="exactly when kind is encoder"):
        CopyDescConfig(encoder="enc.pt")


def test_cli_trains_an_encoder_then_copydesc_embeds_every_sample_with_it(tmp_path):
    pool = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=20)
    enc = tmp_path / "enc" / "copy.pt"
    sets = ["-s", "steps=12", "-s", "batch=16", "-s", "width=8", "-s", "dim=24"]
    result = CliRunner().invoke(app, ["train-encoder", str(pool), "--out", str(enc), *sets])
    assert result.exit_code == 0, result.output
    report = json.loads(enc.with_suffix(".json").read_text())
    downloaded = sum(Pool(pool).read_samples(s).num_rows for s in Pool(pool).shard_ids())
    assert report["images"] == downloaded and len(report["losses"]) == 10
    assert "an augmented view finds its image first" in " ".join(result.output.split())

    args = ["copydesc", str(pool), "-s", "kind=encoder", "-s", f"encoder={enc}", "-s", "column=enc"]
    result = CliRunner().invoke(app, [*args, "-s", "thumb=32"])
    assert result.exit_code == 0, result.output
    table = Pool(pool).read_attributes("enc")
    assert table.num_rows == downloaded
    assert table.schema.field("enc").type.list_size == 24
    vectors = np.stack(table["enc"].to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)


def test_another_encoder_under_the_same_path_cannot_resume_into_the_column(tmp_path):
    pool = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=6)
    enc = tmp_path / "copy.pt"
    ce.save_encoder(ce.CopyEncoder(8, 16), enc, {})
    cfg = CopyDescConfig(kind="encoder", encoder=str(enc), thumb=32, column="enc")
    assert {o.status for o in run_job(CopyDescJob(pool, cfg), "local").outcomes} == {"done"}
    assert {o.status for o in run_job(CopyDescJob(pool, cfg), "local").outcomes} == {"skipped"}
    before = ce.embed(str(enc), textures(3))
    torch.manual_seed(1)
    ce.save_encoder(ce.CopyEncoder(8, 16), enc, {})
    assert not np.allclose(ce.embed(str(enc), textures(3)), before, atol=1e-3)  # no stale cache
    with pytest.raises(ConfigError, match="descriptors made with"):
        run_job(CopyDescJob(pool, cfg), "local")


def test_the_shipped_configs_load_and_point_at_each_other():
    enc = load_config(CopyDescConfig, CONF_DIR / "copydesc" / "encoder.yaml")
    assert enc.kind == "encoder" and enc.thumb == TrainEncoderConfig().thumb
    spec = load_config(FilterJobConfig, CONF_DIR / "filters" / "semdedup_copies.yaml").filters[0]
    assert spec["kind"] == "semdedup" and spec["embeddings"]["attribute"] == enc.column
