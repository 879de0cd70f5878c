import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_image_pool
from PIL import Image

from curation.cards.card import write_card
from curation.cards.data import load_card_data
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.core.subset import Subset
from curation.engines import run_job
from curation.filtering.job import FilterJob

EVIL = "<script>alert('x')</script> **bold** [link](javascript:alert(1)) <img src=x onerror=alert(2)>"


@pytest.fixture
def carded(tmp_path):
    captions = [f"a photo of a red square number {i}" if i % 4 else "bad" for i in range(29)] + [EVIL]
    pool_dir = write_image_pool(tmp_path / "pool", captions, ["photo", "forum"] * 15)
    run_job(FilterJob(pool_dir, [{"kind": "caption_length", "name": "caption"}]), "local")
    pool = Pool(pool_dir)
    # a score attribute table, as the scoring stage writes one
    for shard in pool.shard_ids():
        uids = pool.read_samples(shard)["uid"]
        scores = np.linspace(0.1, 0.4, len(uids))
        out = pool.attributes_dir("score_ref")
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uid": uids, "clip_score_ref": scores}), out / f"{shard}.parquet")
    verdicts = pool.read_attributes("filters")
    kept = [
        u for u, k in zip(verdicts["uid"].to_pylist(), verdicts["caption_keep"].to_pylist(), strict=True) if k
    ]
    path = Subset.from_hex(kept, {"name": "caption_ok", "pool": str(pool_dir)}).save(
        tmp_path / "caption_ok.npy"
    )
    data = load_card_data(path, pool_dir)
    readme, html = write_card(data, pool, tmp_path / "card")
    return data, readme, html


def test_card_funnel_equals_merged_stats_and_balances(carded):
    data, readme, _ = carded
    Funnel(data.stages).check()
    (stage,) = data.stages
    text = readme.read_text()
    row = re.search(r"^\| caption \| all \| (\d+) \| (\d+) \|", text, re.M)
    assert row, text
    assert (int(row[1]), int(row[2])) == (stage.total.seen, stage.total.kept)
    assert stage.total.seen == 30 and stage.total.kept == len(data.subset)
    assert text.startswith("---\npretty_name:") and "size_categories:\n- n<1K" in text


def test_untrusted_caption_renders_as_text(carded):
    _, readme, html = carded
    page = html.read_text()
    md = readme.read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "<script" not in md and "<img src=x" not in md and "](javascript" not in md
    assert "\\*\\*bold\\*\\*" in md


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_card_renders_images_and_tables_in_chromium(carded, tmp_path):
    _, _, html = carded
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        ["chromium", *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<tr>") >= 3 and 'id="funnel"' in dom
    assert "<script>" not in dom  # the caption's script tag is text, not an element
    assert len(re.findall(r'<img alt="sample ', dom)) >= 4
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", *flags, f"--screenshot={shot}", "--window-size=1100,2400", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    coloured = np.abs(pixels - pixels.mean(axis=1, keepdims=True)).sum(axis=1) > 60
    assert coloured.mean() > 0.005, "the plots and sample images should paint coloured pixels"


def test_card_command(carded, tmp_path):
    from typer.testing import CliRunner

    from pipelines.app import app

    subset = tmp_path / "caption_ok.npy"
    assert carded[0].name == "caption_ok"
    result = CliRunner().invoke(app, ["card", str(subset), "--out", str(tmp_path / "c2")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c2" / "card.html").exists() and (
        tmp_path / "c2" / "score_clip_score_ref.png"
    ).exists()
