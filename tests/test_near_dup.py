"""Near dedup on copy-detection descriptors, measured against the synthetic crawl's ground truth,
and the descriptor stage's bookkeeping (reasons, resume, pinned settings)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from curation.core.config import CONF_DIR, ConfigError, load_config
from curation.core.pool import Pool, iter_tar_samples
from curation.engines import run_job
from curation.filtering.copydesc import CopyDescConfig, descriptors, thumbnail
from curation.filtering.copydesc_job import CopyDescJob
from curation.filtering.job import FilterJob, FilterJobConfig
from curation.synth.truth import family_of, near_dup_figures
from pipelines.app import app
from tests.selpools import write_image_pool
from tests.synth_pool import SOURCES, small_crawl, write_synth_pool

DEFAULT = CONF_DIR / "copydesc" / "default.yaml"


@pytest.fixture(scope="module")
def crawl_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2,500 pairs with a tenth of each source's pairs near copies (250 in the pool)."""
    root = tmp_path_factory.mktemp("neardup")
    synth = small_crawl(root / "synth", 2500, *(f"sources.{s}.junk.near_dup=0.1" for s in SOURCES))
    return synth, write_synth_pool(synth, root / "pool", shard_size=1000)


def shipped_near_dup_spec() -> dict:
    """The near_dup block of the synthetic crawl's filter config, as shipped."""
    cfg = load_config(FilterJobConfig, CONF_DIR / "filters" / "synthetic_scored.yaml")
    return next(s for s in cfg.filters if s["kind"] == "near_dup")


def test_shipped_config_finds_near_copies_without_false_merges(crawl_pool):
    synth, pool = crawl_pool
    run_job(CopyDescJob(pool, load_config(CopyDescConfig, DEFAULT)), "local").funnel().check()
    report = run_job(FilterJob(pool, [shipped_near_dup_spec()], "nd"), "local")
    report.funnel().check()
    table = Pool(pool).read_attributes("nd")
    uids = table["uid"].to_pylist()
    assert set(table["near_dup_reason"].to_pylist()) <= {None, "near_duplicate"}  # every image described
    rep = [r or u for u, r in zip(uids, table["near_dup_of"].to_pylist(), strict=True)]
    gt = pq.read_table(synth / "ground_truth.parquet")
    junk = dict(zip(gt["uid"].to_pylist(), gt["junk"].to_pylist(), strict=True))
    fig = near_dup_figures(uids, rep, junk, family_of(gt))
    assert fig["near_copies"] >= 200, fig
    assert fig["recall"] >= 0.9, fig
    assert fig["false_merge_rate"] <= 0.01, fig


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_descriptor_is_close_for_copies_and_far_for_recoloured_images():
    yy, xx = np.mgrid[0:80, 0:96]
    background = np.stack([100 + xx, 60 + yy, 160 - xx // 2], axis=-1).astype(np.uint8)
    base = Image.fromarray(background)
    draw = ImageDraw.Draw(base)
    draw.ellipse((20, 15, 70, 60), fill=(220, 40, 40), outline=(20, 20, 20), width=3)
    draw.rectangle((55, 40, 85, 70), fill=(40, 70, 200))
    cfg = CopyDescConfig()
    variants = [
        jpeg(base, 95),
        jpeg(base, 40),  # re-encoded
        jpeg(base.resize((67, 56)), 85),  # resized
        jpeg(base.crop((3, 2, 93, 77)), 85),  # cropped a few per cent
        jpeg(Image.eval(base, lambda v: min(255, v + 12)), 95),  # another image: colours shifted
    ]
    d = descriptors(np.stack([thumbnail(v, cfg.thumb) for v in variants]), cfg)
    assert d.shape == (5, cfg.dim())
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    sims = d[1:] @ d[0]
    threshold = shipped_near_dup_spec()["threshold"]
    assert (sims[:3] >= threshold).all(), sims
    assert sims[3] < threshold, sims


def test_bad_images_get_a_reason_and_every_row_is_accounted_for(crawl_pool, tmp_path):
    _, pool = crawl_pool
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy, ignore=shutil.ignore_patterns("attributes"))
    tar_rows = pq.read_table(copy / "00000.parquet").to_pylist()
    ok = [r for r in tar_rows if r["status"] == "success"]
    broken, missing = ok[0], ok[1]
    samples = list(iter_tar_samples(copy / "00000.tar"))
    with wds.TarWriter(str(copy / "00000.tar")) as tar:
        for s in samples:
            if s.key == missing["key"]:
                continue
            files = dict(s.files)
            if s.key == broken["key"]:
                files["jpg"] = files["jpg"][:40]  # cut off mid-transfer
            tar.write({"__key__": s.key, **files})
    report = run_job(CopyDescJob(copy, CopyDescConfig()), "local")
    report.funnel().check()
    table = pq.read_table(copy / "attributes" / "copydesc" / "00000.parquet")
    reason = dict(zip(table["uid"].to_pylist(), table["copydesc_reason"].to_pylist(), strict=True))
    assert table.num_rows == len(ok)
    assert reason[broken["uid"]] == "decode_error"
    assert reason[missing["uid"]] == "missing_image"
    assert table["copydesc"].null_count == 2
    total = next(r for r in report.funnel().rows() if r["source"] == "all")
    seen = sum(pq.read_table(p, columns=["status"])["status"].to_pylist().count("success")
               for p in sorted(copy.glob("*.parquet")))  # fmt: skip
    assert (total["seen"], total["kept"]) == (seen, seen - 2)
    assert (total["dropped_decode_error"], total["dropped_missing_image"]) == (1, 1)


def test_rerun_skips_done_shards_and_refuses_other_settings(crawl_pool, tmp_path):
    _, pool = crawl_pool
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy, ignore=shutil.ignore_patterns("attributes"))
    first = run_job(CopyDescJob(copy, CopyDescConfig()), "local")
    assert {o.status for o in first.outcomes} == {"done"}
    again = run_job(CopyDescJob(copy, CopyDescConfig()), "local")
    assert {o.status for o in again.outcomes} == {"skipped"}
    with pytest.raises(ConfigError, match="descriptors made with"):
        run_job(CopyDescJob(copy, CopyDescConfig(thumb=8)), "local")


def test_cli_writes_descriptors_with_overridden_settings(tmp_path):
    pool = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=12)
    result = CliRunner().invoke(app, ["copydesc", str(pool), "-c", str(DEFAULT), "-s", "thumb=8"])
    assert result.exit_code == 0, result.output
    table = Pool(pool).read_attributes("copydesc")
    downloaded = sum(Pool(pool).read_samples(s).num_rows for s in Pool(pool).shard_ids())
    assert table.num_rows == downloaded
    assert table.schema.field("copydesc").type.list_size == CopyDescConfig(thumb=8).dim()
