import itertools
import json
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import write_image_pool
from PIL import Image

from curation.cards.card import write_card
from curation.cards.data import load_card_data
from curation.cards.funnel import card_funnel
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.engines import run_job
from curation.filtering.job import FilterJob

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVIL = "<script>alert('x')</script> **bold** [link](javascript:alert(1)) <img src=x onerror=alert(2)>"


@pytest.fixture
def carded(tmp_path):
    from curation.selection.run import SelectSpec, run_selection, save_selection

    captions = [f"a photo of a red square number {i}" if i % 4 else "bad" for i in range(29)] + [EVIL]
    # names with Markdown's special characters: the YAML header must keep them exactly
    pool_dir = write_image_pool(tmp_path / "pool", captions, ["photo_hq", "forum*"] * 15)
    run_job(FilterJob(pool_dir, [{"kind": "caption_length", "name": "caption"}]), "local")
    pool = Pool(pool_dir)
    # a score attribute table, as the scoring stage writes one
    for shard in pool.shard_ids():
        uids = pool.read_samples(shard)["uid"]
        scores = np.linspace(0.1, 0.4, len(uids))
        out = pool.attributes_dir("score_ref")
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uid": uids, "clip_score_ref": scores}), out / f"{shard}.parquet")
    steps = [
        {"filter": {"stage": "filters"}},
        {"topk": {"score": "score_ref:clip_score_ref", "fraction": 0.5}},
    ]
    spec = SelectSpec(name="clip_top30", description="the better half by score", steps=steps)
    path = save_selection(run_selection(pool_dir, spec, work_dir=tmp_path / "work"), tmp_path / "top30.npy")
    data = load_card_data(path, pool_dir)
    readme, html = write_card(data, pool, tmp_path / "card")
    return data, readme, html


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n")[1])


def test_card_yaml_header_reads_back_to_the_data(carded):
    data, readme, _ = carded
    meta = _front_matter(readme.read_text())
    kept = data.frame[data.frame["in_subset"]]
    assert meta["pretty_name"] == data.name == "clip_top30"
    assert meta["source_datasets"] == sorted(kept["source"].unique()) == ["forum*", "photo_hq"]
    assert meta["configs"] == [{"config_name": "clip_top30", "data_files": "top30.npy"}]
    assert meta["size_categories"] == ["n<1K"]
    text = readme.read_text()
    assert "`top30.npy`" in text and "clip\\_top30.npy" not in text and "\xa0" not in text
    assert "&\\#" not in text  # no HTML entity broken by Markdown escaping


def test_card_funnel_runs_from_the_pool_to_the_set_and_adds_up(carded):
    data, readme, _ = carded
    Funnel(data.stages).check()
    rows = card_funnel(data.stages, data.subset.manifest, len(data.subset))
    assert [r.stage for r in rows] == ["filter", "topk"]
    assert rows[1].note == "top 50% by score_ref:clip_score_ref"
    assert rows[0].seen == 30 and rows[-1].kept == len(data.subset) > 0
    for prev, cur in itertools.pairwise(rows):
        assert cur.seen == prev.kept and "sees" not in cur.note
        assert cur.seen == cur.kept + sum(cur.dropped.values())
    text = readme.read_text()
    last = re.findall(r"^\| topk \| ([\d,]+) \| ([\d,]+) \|", text, re.M)
    assert last and int(last[0][1].replace(",", "")) == len(data.subset)
    # drop reasons over the pool count each sample once
    reasons = re.findall(
        r"^- (.+): (\d+)$", text.split("## Drop reasons over the pool")[1].split("##")[0], re.M
    )
    assert sum(int(n) for _, n in reasons) == rows[0].seen - rows[0].kept


def test_card_funnel_shows_upsampling_and_a_broken_chain():
    from curation.core.stats import Counts, StageStats

    download = StageStats("download", Counts(100, 90, Counter({"http_404": 10})))
    select = StageStats("select:topk", Counts(100, 40, Counter({"below_topk": 60})))
    rows = card_funnel([download], {"funnel": {"stages": [select.to_dict()]}}, written=55)
    assert [(r.stage, r.seen, r.kept) for r in rows] == [
        ("download", 100, 90), ("topk", 100, 40), ("upsampling", 40, 55)
    ]  # fmt: skip
    assert "sees 100 rows where download kept 90" in rows[1].note and "+15 copies" in rows[2].note
    mix = StageStats("mix", Counts(60, 30, Counter({"not_drawn": 30})))
    rows = card_funnel([download], {"stats": mix.to_dict()}, written=30)
    assert [(r.stage, r.seen, r.kept) for r in rows] == [("download", 100, 90), ("mix", 60, 30)]
    assert rows[1].note.endswith("sees 60 rows where download kept 90")  # candidates, not the pool


def test_card_examples_are_distinct(carded):
    from curation.cards.card import sample_grid

    data, _, _ = carded
    assert (data.frame["caption"] == "bad").sum() > 1  # the pool repeats a caption
    rows = sample_grid(data, Pool(data.subset.manifest["pool"]))
    captions = [r["caption"] for r in rows]
    assert len(captions) == len(set(captions)) and {r["group"] for r in rows} == {"kept", "dropped"}


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
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
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


MEASURE = """<pre id="layout"></pre><script>
const vw = document.documentElement.clientWidth;
const wide = [...document.querySelectorAll("table")].filter(t => {
  const r = t.getBoundingClientRect();
  return r.top < 900 && r.width > 0 && r.right > vw + 1;
});
document.getElementById("layout").textContent = JSON.stringify(
  {scroll: document.documentElement.scrollWidth, viewport: vw, wide: wide.length});
</script>"""


def _layout(html: str, tmp_path, name: str) -> dict:
    """The page's scroll width and wide tables at a 1200x900 window (Chromium's own layout)."""
    page = tmp_path / f"{name}.html"
    # the card forbids scripts (CSP); the measuring copy drops that header and adds one script
    page.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html).replace(
        "</body>", MEASURE + "</body>"))  # fmt: skip
    dom = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
         "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S)
    assert found and found[1], dom[-2000:]
    return json.loads(found[1])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_card_first_screen_fits_1200px_in_chromium(carded, tmp_path):
    _, _, html = carded
    text = html.read_text()
    got = _layout(text, tmp_path, "card")
    assert got["viewport"] <= 1200 and got["scroll"] <= got["viewport"] and got["wide"] == 0, got
    # the measurement can fail: the same page with a 30-column funnel-style table overflows
    cells = "".join(f"<td>dropped_reason_{i}</td>" for i in range(30))
    wide = text.replace(
        "<h2>Curation funnel</h2>", f'<table style="white-space:nowrap"><tr>{cells}</tr></table>'
    )
    control = _layout(wide, tmp_path, "control")
    assert control["scroll"] > control["viewport"] and control["wide"] == 1, control


def test_card_command(carded, tmp_path):
    from typer.testing import CliRunner

    from pipelines.app import app

    subset = tmp_path / "top30.npy"
    assert carded[0].name == "clip_top30"
    result = CliRunner().invoke(app, ["card", str(subset), "--out", str(tmp_path / "c2")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c2" / "card.html").exists() and (
        tmp_path / "c2" / "score_clip_score_ref.png"
    ).exists()


def test_card_from_s3_inputs_written_to_s3_is_the_local_card(carded, s3, tmp_path):
    """Subset, pool (with attribute tables and stage stats) and results on S3, the card written to S3:
    the same files, byte for byte, as the card made from and into local disk."""
    from curation.cards.stage import CardInputs, run_card
    from curation.core import storage
    from curation.core.stagedef import NoConfig
    from tests.test_reshard_s3 import local_files, remote_files

    result = {"set": "clip_top30", "model": "RN50", "dataset": "imagenet1k", "metrics": {"acc1": 0.125}}
    (tmp_path / "results.jsonl").write_text(json.dumps(result) + "\n")
    storage.upload_dir(tmp_path / "pool", f"{s3.url}/pool")
    for name in ("top30.npy", "top30.json", "results.jsonl"):
        storage.write_bytes(f"{s3.url}/sets/{name}", (tmp_path / name).read_bytes())
    local = CardInputs(subset=tmp_path / "top30.npy", out=tmp_path / "local_card", pool=tmp_path / "pool",
                       results=[tmp_path / "results.jsonl"])  # fmt: skip
    remote = CardInputs(subset=f"{s3.url}/sets/top30.npy", out=f"{s3.url}/card", pool=f"{s3.url}/pool",
                        results=[f"{s3.url}/sets/results.jsonl"])  # fmt: skip
    assert CardInputs.model_validate(remote.model_dump()).out == remote.out
    run_card(local, NoConfig())
    summary = run_card(remote, NoConfig()).summary
    assert summary["html"] == f"{s3.url}/card/card.html"
    want, got = local_files(tmp_path / "local_card"), remote_files(f"{s3.url}/card")
    assert sorted(got) == sorted(want) and {"README.md", "card.html", "provenance.json"} <= set(got)
    assert any(n.endswith(".png") for n in got)
    assert "| RN50 | imagenet1k | acc1 | 0.1250 |" in got["README.md"].decode()
    for name in want:  # paths are never written into the card: nothing to normalise
        assert got[name] == want[name], name
