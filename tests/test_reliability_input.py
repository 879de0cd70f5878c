"""Bad input, one test per case of issue #12: a clear error naming what is wrong, or a recorded drop

(Over 400 lines: one test per bad-input case of one issue, sharing its pool builders.)
reason while the rest of the shard and job goes on, and a funnel that balances.

Image and caption cases go through the real score stage (one scored pool holds them all, next to
a shard whose tar is cut short); parquet cases through filter and select. Cases tested elsewhere:
  - caption with HTML and script, escaped in cards:
    tests/test_card.py::test_untrusted_caption_renders_as_text
  - subset naming uids not in the pool:
    tests/test_reshard.py::test_uids_missing_from_the_pool_are_counted_not_fatal
  - truncated pool tar in reshard:
    tests/test_reshard.py::test_a_truncated_pool_tar_loses_only_its_damaged_samples
  - url policy: tests/test_download.py::test_policy_*; safe YAML: tests/test_config.py
  - missing caption file, truncated JPEG in scoring: tests/test_scoring.py::test_bad_samples_get_a_reason_*
"""

from __future__ import annotations

import functools
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image, ImageFile

from curation.cards.card import write_card
from curation.cards.data import CardData
from curation.core.config import ConfigError
from curation.core.pool import Pool, PoolError
from curation.core.safepath import UnsafePathError, child, safe_name
from curation.core.stats import Funnel
from curation.core.subset import Subset
from curation.core.uid import array_to_uids, compute_uid
from curation.engines import run_job
from curation.filtering.job import FilterJob
from curation.scoring import ModelLoadError, ScoreConfig, score_pool
from curation.scoring.loader import MAX_CAPTION_CHARS, ImagePrep, PairDecoder, to_rgb
from curation.scoring.model import ModelSpec
from curation.selection.frame import SelectionError
from curation.selection.run import SelectSpec, run_selection
from tests.conftest import write_metadata_pool
from tests.image_pool import draw, jpeg
from trainer.runs import checkpoint_metadata
from trainer.suites import SuiteError, load_suite

COLUMN = "clip_score_tiny_vit"
HUGE_CAPTION = ("a photo of a red circle " * 50_000)[:1_000_000]


def _png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (48, 48), 1)
    img.putpalette([0, 0, 0, 220, 40, 40] * 128)
    return _png(img, transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 48), c) for c in [(220, 40, 40), (40, 70, 220)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (48, 48), (10, 200, 30, 0)).save(buf, format="JPEG")
    return buf.getvalue()


GOOD = jpeg(draw(np.random.default_rng(0), "red", "circle", 48))

# key -> (image bytes and extension, caption bytes, the reason scoring must record (None: scored))
CASES: dict[str, tuple[tuple[str, Callable[[], bytes]], bytes, str | None]] = {
    "cmyk": (("jpg", _cmyk_jpeg), b"a green square in cmyk", None),
    "gray16": (("png", lambda: _png(Image.fromarray(np.full((48, 48), 40000, np.uint16)))), b"grey", None),
    "rgba": (("png", lambda: _png(Image.new("RGBA", (48, 48), (220, 40, 40, 90)))), b"a red veil", None),
    "palette": (("png", _palette_with_transparency), b"a red square, palette", None),
    # img2dataset names every image by its encode_format; with skip_reencode the bytes stay a GIF
    "animated": (("jpg", _animated_gif), b"a blinking square", None),
    "zero_byte": (("jpg", lambda: b""), b"an empty file", "decode_error"),
    "corrupt": (("jpg", lambda: GOOD[:200] + b"\x00garbage" * 10), b"a corrupt jpeg", "decode_error"),
    # 20000 x 20000 = 400 M pixels in a ~50 KB file: PIL refuses it in open()
    "bomb": (
        ("png", lambda: _png(Image.new("1", (20000, 20000)))),
        b"a decompression bomb",
        "image_too_large",
    ),
    # 100 M pixels: above PIL's warning threshold, below its error
    "huge": (("png", lambda: _png(Image.new("1", (10000, 10000)))), b"huge dimensions", "image_too_large"),
    # few pixels, but scaling its short side to the model input would make 60000*112 x 112
    "banner": (("png", lambda: _png(Image.new("L", (60000, 2)))), b"an extreme banner", "image_too_large"),
    "non_utf8": (("jpg", lambda: GOOD), "caf\u00e9 photo of a red circle".encode("latin-1") + b"\xff", None),
    "empty_caption": (("jpg", lambda: GOOD), b"   ", "missing_caption"),
    "huge_caption": (("jpg", lambda: GOOD), HUGE_CAPTION.encode(), None),
    "html_caption": (("jpg", lambda: GOOD), b"<script>alert(1)</script><b>a red circle</b>", None),
}
TRUNCATED_SHARD_SIZE = 12


def _write_shard(root: Path, shard: str, samples: list[tuple[str, str, bytes, bytes]]) -> None:
    """One img2dataset-style shard: tar of KEY.<ext>/KEY.txt/KEY.json and the parquet rows."""
    rows = []
    with wds.TarWriter(str(root / f"{shard}.tar"), encoder=False) as tar:
        for key, ext, image, caption_bytes in samples:
            caption = caption_bytes.decode("utf-8", errors="replace")
            url = f"http://127.0.0.1/img/{key}.{ext}"
            row = {"key": key, "url": url, "caption": caption, "status": "success", "error_message": None}
            row |= {"uid": compute_uid(url, caption), "source": ("photo", "forum")[len(rows) % 2]}
            meta = json.dumps({"key": key, "uid": row["uid"]}).encode()
            tar.write({"__key__": key, ext: image, "txt": caption_bytes, "json": meta})
            rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), root / f"{shard}.parquet")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_scoring import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, ckpt: Path) -> dict:
    """A pool: shard 00000 holds every bad-input case, shard 00001 is whole but its tar is cut in two."""
    root = tmp_path_factory.mktemp("badpool")
    _write_shard(root, "00000", [(k, ext, image_bytes(k), cap) for k, ((ext, _), cap, _) in CASES.items()])
    _write_shard(
        root, "00001", [(f"t{i:03d}", "jpg", GOOD, b"a red circle") for i in range(TRUNCATED_SHARD_SIZE)]
    )
    data = (root / "00001.tar").read_bytes()
    (root / "00001.tar").write_bytes(data[: len(data) // 2])
    threads = torch.get_num_threads()
    cfg = ScoreConfig.model_validate(
        {"model": "tiny-vit", "pretrained": str(ckpt), "device": "cpu", "batch_size": 8, "loader_workers": 0}
    )
    report = score_pool(root, cfg)
    torch.set_num_threads(threads)
    table = Pool(root).read_attributes(COLUMN)
    keys = pa.concat_tables(Pool(root).read_samples(s, ["key"]) for s in ("00000", "00001"))["key"]
    return {
        "root": root,
        "report": report,
        "rows": dict(zip(keys.to_pylist(), table.to_pylist(), strict=True)),
    }


@functools.cache
def image_bytes(key: str) -> bytes:
    return CASES[key][0][1]()


def _assert_case(scored: dict, key: str) -> None:
    """The case's reason was recorded (or it was scored), every shard finished, the funnel balances."""
    report = scored["report"]
    assert not report.failed, [o.error for o in report.failed]
    row = scored["rows"][key]
    expected = CASES[key][2]
    assert row[f"{COLUMN}_reason"] == expected
    assert (row[COLUMN] is None) == (expected is not None)
    funnel = Funnel(report.stats)
    funnel.check()
    (stage,) = funnel.stages
    assert stage.total.seen == len(CASES) + TRUNCATED_SHARD_SIZE == len(scored["rows"])
    assert stage.total.kept == sum(r[f"{COLUMN}_reason"] is None for r in scored["rows"].values())


def test_cmyk_jpeg_is_scored(scored):
    _assert_case(scored, "cmyk")


def test_16_bit_png_is_scored_as_its_grey_not_clipped_white(scored):
    _assert_case(scored, "gray16")
    img = Image.open(io.BytesIO(image_bytes("gray16")))
    assert img.mode.startswith("I;16") and np.asarray(to_rgb(img)).mean() == pytest.approx(40000 >> 8)


def test_rgba_png_is_scored(scored):
    _assert_case(scored, "rgba")


def test_palette_png_with_transparency_is_scored(scored):
    _assert_case(scored, "palette")


def test_animated_gif_is_scored_from_its_first_frame(scored):
    _assert_case(scored, "animated")


def test_zero_byte_image_is_a_decode_error(scored):
    _assert_case(scored, "zero_byte")


def test_corrupt_jpeg_is_a_decode_error(scored):
    _assert_case(scored, "corrupt")


def test_decompression_bomb_is_refused_without_decoding_a_pixel(scored, monkeypatch):
    _assert_case(scored, "bomb")
    assert len(image_bytes("bomb")) < 100_000  # small on disk

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    prep = ImagePrep(lambda im: im, (0.5,) * 3, (0.5,) * 3, (224, 224))
    for key in ("bomb", "huge", "banner"):
        _, status = PairDecoder(prep).image({"__key__": key, "png": image_bytes(key)})
        assert status == 3, key  # IMAGE_TOO_LARGE, from the header alone


def test_huge_dimensions_are_refused(scored):
    _assert_case(scored, "huge")
    _assert_case(scored, "banner")


def test_non_utf8_caption_is_decoded_with_replacement_and_scored(scored):
    _assert_case(scored, "non_utf8")
    assert scored["rows"]["non_utf8"]["text_emb"] is not None


def test_empty_caption_is_missing_caption(scored):
    _assert_case(scored, "empty_caption")


def test_one_megabyte_caption_is_cut_before_tokenizing_with_the_same_tokens(scored):
    _assert_case(scored, "huge_caption")
    tokenizer = open_clip.get_tokenizer("RN50")
    assert torch.equal(tokenizer([HUGE_CAPTION[:MAX_CAPTION_CHARS]]), tokenizer([HUGE_CAPTION]))


def test_one_megabyte_caption_is_dropped_by_the_caption_filter_with_its_reason(tmp_path):
    pool = write_metadata_pool(tmp_path / "pool", n_shards=1, per_shard=10)
    table = pq.read_table(pool / "00000.parquet")
    captions = table["caption"].to_pylist()
    captions[table["status"].to_pylist().index("success")] = HUGE_CAPTION
    pq.write_table(table.set_column(2, "caption", pa.array(captions)), pool / "00000.parquet")
    report = run_job(FilterJob(pool, [{"kind": "caption_length", "name": "cap"}]), "local")
    assert not report.failed
    samples = Pool(pool).read_samples("00000")
    verdicts = dict(zip(Pool(pool).read_attributes("filters")["uid"].to_pylist(),
                        Pool(pool).read_attributes("filters").to_pylist(), strict=True))  # fmt: skip
    huge = [u for u, c in zip(samples["uid"].to_pylist(), samples["caption"].to_pylist(), strict=True)
            if c == HUGE_CAPTION]  # fmt: skip
    assert len(huge) == 1
    assert verdicts[huge[0]]["cap_keep"] is False and verdicts[huge[0]]["cap_reason"] == "too_long_caption"
    Funnel(report.stats).check()


def test_html_caption_is_scored_as_text(scored):
    _assert_case(scored, "html_caption")


def test_truncated_tar_records_lost_samples_and_the_rest_is_scored(scored):
    rows = {k: r for k, r in scored["rows"].items() if k.startswith("t")}
    reasons = [r[f"{COLUMN}_reason"] for r in rows.values()]
    lost = reasons.count("truncated_tar")
    assert 0 < lost < TRUNCATED_SHARD_SIZE and reasons.count(None) == TRUNCATED_SHARD_SIZE - lost
    assert set(reasons) == {None, "truncated_tar"}
    by_stage = {s.stage: s for s in scored["report"].stats}
    assert by_stage["score"].total.dropped["truncated_tar"] == lost
    Funnel(scored["report"].stats).check()


# ---------------------------------------------------------------- parquet input: filter and select


def _rewrite(pool: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    for path in sorted(pool.glob("*.parquet")):
        pq.write_table(change(pq.read_table(path)), path)


def _select(pool: Path, *steps: dict) -> object:
    return run_selection(pool, SelectSpec(steps=list(steps)))


def test_missing_column_is_a_clear_error_naming_it(metadata_pool):
    with pytest.raises(SelectionError, match="no column 'clip_nope'"):
        _select(metadata_pool, {"topk": {"score": "clip_nope", "fraction": 0.5}})
    _rewrite(metadata_pool, lambda t: t.drop(["caption"]))
    report = run_job(FilterJob(metadata_pool, [{"kind": "caption_length", "name": "cap"}]), "local")
    assert report.failed and all("no caption column" in (o.error or "") for o in report.outcomes)


def test_mistyped_columns_are_clear_errors_naming_them(metadata_pool):
    _rewrite(metadata_pool, lambda t: t.append_column("clip_score", pa.array(["0.3"] * t.num_rows)))
    for step in (
        {"topk": {"score": "clip_score", "fraction": 0.5}},
        {"threshold": {"score": "clip_score", "min": 0.2}},
    ):
        with pytest.raises(SelectionError, match="score column 'clip_score' holds VARCHAR, not numbers"):
            _select(metadata_pool, step)
    _rewrite(metadata_pool, lambda t: t.set_column(2, "caption", pa.array(range(t.num_rows))))
    report = run_job(FilterJob(metadata_pool, [{"kind": "caption_length", "name": "cap"}]), "local")
    assert report.failed and "caption column 'caption' holds int64, not text" in (
        report.failed[0].error or ""
    )


def test_duplicate_uids_keep_one_row_and_the_rest_are_dropped_with_a_reason(tmp_path):
    pool = write_metadata_pool(tmp_path / "pool", n_shards=2, per_shard=20)
    rows = pq.read_table(pool / "00001.parquet").to_pylist()
    successes = [r for r in rows if r["status"] == "success"][:3]
    pq.write_table(pa.Table.from_pylist(rows + successes), pool / "00001.parquet")  # same url + caption
    result = _select(pool, {"all": {}})
    n_rows = sum(pq.read_table(p).filter(pa.compute.equal(pq.read_table(p)["status"], "success")).num_rows
                 for p in sorted(pool.glob("*.parquet")))  # fmt: skip
    result.funnel.check()
    first = result.funnel.stages[0]
    assert first.stage == "select:unique_uid" and first.total.seen == n_rows
    assert dict(first.total.dropped) == {"duplicate_uid": 3}
    assert len(result.subset) == result.subset.unique_count() == n_rows - 3
    # without duplicates the funnel has no such stage
    assert [s.stage for s in _select(write_metadata_pool(tmp_path / "p2"), {"all": {}}).funnel.stages] == [
        "select:all"
    ]


def test_nan_and_missing_scores_are_dropped_as_missing_score(metadata_pool):
    def scores(t: pa.Table) -> pa.Table:
        values = [
            None if i % 5 == 0 else (float("nan") if i % 7 == 0 else i / 100) for i in range(t.num_rows)
        ]
        return t.append_column("clip_score", pa.array(values, pa.float32()))

    _rewrite(metadata_pool, scores)
    result = _select(metadata_pool, {"topk": {"score": "clip_score", "fraction": 0.5}})
    result.funnel.check()
    (stage,) = result.funnel.stages
    pool = Pool(metadata_pool)
    samples = pa.concat_tables(pool.read_samples(s, ["uid", "clip_score"]) for s in pool.shard_ids())
    frame = samples.to_pandas()
    missing = frame["clip_score"].isna()  # NaN and null alike
    assert stage.total.dropped["missing_score"] == int(missing.sum()) > 0
    assert set(array_to_uids(result.subset.uids)).isdisjoint(frame.loc[missing, "uid"])
    assert len(result.subset) == round(0.5 * int((~missing).sum()))


def test_empty_pool_is_a_clear_error_and_an_empty_shard_goes_through(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="no shard parquet files"):
        _select(tmp_path / "empty", {"all": {}})
    pool = write_metadata_pool(tmp_path / "pool", n_shards=1)
    _rewrite(pool, lambda t: t.slice(0, 0))
    result = _select(pool, {"all": {}})
    result.funnel.check()
    assert len(result.subset) == 0 and result.funnel.stages[0].total.seen == 0
    report = run_job(FilterJob(pool, [{"kind": "caption_length", "name": "cap"}]), "local")
    assert not report.failed and Funnel(report.stats).stages[0].total.seen == 0


# ---------------------------------------------------------------- checkpoints and paths from data


class _Payload:
    """Unpickling this object opens (creates) a file: the proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from curation.core.models import register_project_models
    from trainer.supervised import _load_state
    from trainer.train import trained_epochs

    register_project_models()
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    model = open_clip.create_model("tiny-vit")
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "extra": _Payload(marker)}, bad)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint_metadata(bad)
    with pytest.raises(ModelLoadError, match="cannot load checkpoint"):
        ModelSpec("tiny-vit", str(bad)).load(torch.device("cpu"))
    with pytest.raises(pickle.UnpicklingError):
        _load_state(bad, model, torch.optim.SGD(model.parameters(), lr=0.1), None)

    class Plan:  # trained_epochs reads RUN/openclip/checkpoints/epoch_latest.pt
        class request:
            out = tmp_path / "run"

    state = tmp_path / "run" / "openclip" / "checkpoints" / "epoch_latest.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(bad.read_bytes())
    with pytest.raises(pickle.UnpicklingError):
        trained_epochs(Plan)  # type: ignore[arg-type]
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../etc/x", "a/b", "..", ".hidden", "", "c:\\x", "ok-name_1.2"])
def test_names_from_data_become_one_plain_path_component(name, tmp_path):
    safe = safe_name(name)
    assert safe and "/" not in safe and "\\" not in safe and not safe.startswith(".")
    assert (tmp_path / safe).resolve().parent == tmp_path.resolve()
    assert (safe == name) == (name == "ok-name_1.2")


def test_child_paths_stay_under_their_root(tmp_path):
    assert child(tmp_path, "a/b/../c") == tmp_path / "a" / "c"
    for bad in ("../x", "a/../../x", "/etc/passwd", ".."):
        with pytest.raises(UnsafePathError, match="points outside"):
            child(tmp_path, bad)


def test_a_score_column_named_like_a_path_cannot_write_outside_the_card(tmp_path):
    evil = "../../outside_score"
    frame = pd.DataFrame(
        {"uid": ["a" * 32, "b" * 32], "caption": ["x", "y"], evil: [0.1, 0.2], "in_subset": [True, False]}
    )
    data = CardData("c", Subset.from_hex(["a" * 32], {"name": "c"}), frame)
    pool_dir = write_metadata_pool(tmp_path / "pool", n_shards=1, per_shard=4)
    out = tmp_path / "deep" / "card"
    write_card(data, Pool(pool_dir), out)
    assert (out / f"score_{safe_name(evil)}.png").exists()
    outside = [p for p in tmp_path.rglob("*.png") if out not in p.parents]
    assert outside == []


def test_a_suite_test_set_path_outside_the_suite_is_refused(tmp_path):
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "suite.yaml").write_text(
        "name: s\ntest_sets:\n  - {name: a, path: ../../elsewhere, role: in_distribution}\n"
    )
    with pytest.raises(SuiteError, match="points outside"):
        load_suite(tmp_path / "suite")


def test_an_ablation_set_name_like_a_path_is_refused():
    from curation.core.config import build
    from workflows.ablation import AblationConfig

    for name in ("../x", "a/b", ".hidden"):
        with pytest.raises(ConfigError):
            build(AblationConfig, {"pool": "p", "named_sets": {name: "x.npy"}}, source="test")
