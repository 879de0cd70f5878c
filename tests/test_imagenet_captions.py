"""ImageNet-Captions: the join, caption formatting and cleaning, the pool written, the report, the CLI."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from curation.builders.imagenet_captions import (
    YFCC100M_COLUMNS,
    ImagenetCaptionsConfig,
    ImagenetCaptionsError,
    run_imagenet_captions,
)
from curation.builders.metaclean import clean_tags, clean_text, url_decode
from curation.core.pool import Pool
from curation.core.stats import Funnel
from pipelines.app import app

# image_id, label, flickr_id (a string column: ids as text, one not a number), expected status, caption
CASES = [
    ("n01_1", 0, "101", "success", "Title: Reflected Duck. Tags: lake, water, bird"),
    ("n01_2", 0, "102", "success", 'Title: Café & Bar. Description: I love this "cup"! Shot on film'),
    ("n01_3", 0, None, "no_flickr_id", None),
    ("n01_4", 0, "104", "no_metadata", None),
    ("n01_5", 0, "105", "empty_text", None),
    ("n01_6", 0, "106", "empty_text", None),
    ("n01_7", 0, "107", "success", "Title: First"),
    ("n01_1", 0, "101", "duplicate_image", None),
    ("n02_1", 1, "109", "missing_image", "Title: Lost image"),  # failures keep their caption (img2dataset)
    ("n02_2", 1, "110", "corrupt_image", "Title: Broken file"),
    (
        "n02_3",
        1,
        "111",
        "success",
        "Title: My red fish. Description: My red fish. Group pool & more. Tags: red fish, 2010",
    ),
    ("n02_4", 1, "12abc", "bad_flickr_id", None),
    ("n02_5", 1, "113", "success", "Title: C++ book. Description: 100% cotton"),
]
# photo_id, title, description, tags: as YFCC100M stores them (URL-encoded, with markup and entities)
META = [
    (101, "Reflected+Duck", "", "lake,water,bird"),
    (102, "Caf%C3%A9+%26+Bar", "I+love+this+%22cup%22%21%3Cbr+%2F%3EShot+on+film", None),
    (105, None, None, None),
    (106, "++%3Cb%3E%3C%2Fb%3E+", None, ",,"),
    (107, "First", None, None),
    (107, "Second", "duplicate photo id: only the first row counts", None),
    (109, "Lost+image", None, None),
    (110, "Broken+file", None, None),
    (
        111,
        "My+red+fish",
        "My+red+fish.+%26lt%3Ba+href%3D%26quot%3Bhttp%3A%2F%2Fflickr.com%26quot%3B%26gt%3BGroup+pool%26lt%3B%2Fa%26gt%3B+%26amp%3B+more",
        "red+fish,2010",
    ),
    (113, "C%2B%2B+book", "100%25+cotton", ""),
    (999, "Orphan", None, "no+image"),
    (None, "No+id", None, None),
]
CLASSES = ["duck", "fish"]


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 9), color).save(buf, format="JPEG")
    return buf.getvalue()


def _images() -> dict[str, bytes]:
    """Bytes of every image on disk (n02_1 has none, n02_2 is not an image)."""
    ids = sorted({c[0] for c in CASES} - {"n02_1"})
    images = {i: _jpeg((10 * k, 255 - 10 * k, 3 * k)) for k, i in enumerate(ids)}
    images["n02_2"] = b"this is not a jpeg"
    return images


def write_inputs(root: Path, layout: str = "tars") -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    index = pa.table(
        {
            "image_id": [c[0] for c in CASES],
            "label": pa.array([c[1] for c in CASES], pa.int32()),
            "class_name": [CLASSES[c[1]] for c in CASES],
            "flickr_id": pa.array([c[2] for c in CASES], pa.string()),
        }
    )
    pq.write_table(index, root / "index.parquet")
    cols = list(zip(*META, strict=True))
    meta = pa.table(
        {
            "photo_id": pa.array(cols[0], pa.int64()),
            "title": pa.array(cols[1], pa.string()),
            "description": pa.array(cols[2], pa.string()),
            "tags": pa.array(cols[3], pa.string()),
        }
    )
    pq.write_table(meta, root / "flickr_meta.parquet")
    images = _images()
    img_dir = root / "images"
    if layout == "tars":  # synthetic layout: keys are not image ids; the json says which image it is
        img_dir.mkdir()
        items = sorted(images.items())
        for t in range(2):
            with wds.TarWriter(str(img_dir / f"{t:05d}.tar")) as sink:
                for k, (image_id, data) in enumerate(items[t::2]):
                    meta_json = json.dumps({"image_id": image_id}).encode()
                    sink.write({"__key__": f"{t}{k:05d}", "jpg": data, "json": meta_json, "cls": b"0"})
    else:  # ImageNet's own layout: train/<wnid>/<image_id>.JPEG
        for image_id, data in images.items():
            (img_dir / image_id.split("_")[0]).mkdir(parents=True, exist_ok=True)
            (img_dir / image_id.split("_")[0] / f"{image_id}.JPEG").write_bytes(data)
    return {"index": root / "index.parquet", "meta": root / "flickr_meta.parquet", "images": img_dir}


def write_yfcc_tsv(path: Path) -> Path:
    """The same metadata as the YFCC100M dataset file: 25 tab-separated columns, no header."""
    lines = []
    for n, (pid, title, desc, tags) in enumerate(META):
        row = [""] * len(YFCC100M_COLUMNS)
        row[0], row[1] = str(n), "" if pid is None else str(pid)
        row[8], row[9], row[10] = title or "", desc or "", tags or ""
        lines.append("\t".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    return write_inputs(tmp_path / "in")


def _rows(out: Path) -> list[dict]:
    return pq.read_table(sorted(out.glob("[0-9]*.parquet"))).to_pylist()


def _check_exact(rows: list[dict]) -> None:
    assert len(rows) == len(CASES)
    for row, (image_id, label, _, status, caption) in zip(rows, CASES, strict=True):
        assert (row["image_id"], row["label"], row["status"]) == (image_id, label, status)
        assert row["caption"] == caption, image_id
        assert (row["error_message"] is None) == (status == "success")


def test_join_is_exact_on_every_row(inputs, tmp_path):
    out = tmp_path / "pool"
    job, report = run_imagenet_captions(
        inputs["index"], inputs["meta"], inputs["images"], out, ImagenetCaptionsConfig(shard_size=5)
    )
    assert not job.failed and report is not None
    rows = _rows(out)
    _check_exact(rows)
    assert sorted(p.name for p in out.glob("[0-9]*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]

    not_joined = {"duplicate_image", "no_flickr_id", "bad_flickr_id", "no_metadata"}
    joined = sum(c[3] not in not_joined for c in CASES)
    assert report["index_rows"] == len(CASES)
    assert report["joined"] == joined and report["join_rate"] == pytest.approx(joined / len(CASES), abs=1e-6)
    assert report["samples"] == sum(c[3] == "success" for c in CASES)
    expected_reasons = {}
    for c in CASES:
        if c[3] != "success":
            expected_reasons[c[3]] = expected_reasons.get(c[3], 0) + 1
    assert report["not_joined_or_dropped"] == expected_reasons
    assert report["duplicate_meta_rows"] == 1
    assert report["orphan_meta_rows"] == 1
    assert report["meta_rows_without_photo_id"] == 1
    funnel = Funnel.from_dict(report["funnel"])
    funnel.check()
    assert [s.stage for s in funnel.stages] == ["join", "caption", "image"]
    assert "join rate" in (out / "report.md").read_text()


def test_pool_samples_are_readable_with_their_labels_and_images(inputs, tmp_path):
    out = tmp_path / "pool"
    run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], out, ImagenetCaptionsConfig())
    images = _images()
    pool = Pool(out)
    samples = pool.read_samples("00000")
    expected = {c[0]: c for c in CASES if c[3] == "success"}
    assert len(expected) == 5
    assert sorted(samples["image_id"].to_pylist()) == sorted(expected)
    assert set(samples["source"].to_pylist()) == {"imagenet_captions"}
    by_key = {r["key"]: r for r in samples.to_pylist()}
    seen = 0
    for s in pool.iter_tar("00000"):
        row = by_key[s.key]
        meta = s.meta()
        assert s.files["jpg"] == images[row["image_id"]]
        assert s.files["txt"].decode() == row["caption"] == expected[row["image_id"]][4]
        assert int(s.files["cls"]) == row["label"]
        assert meta["uid"] == row["uid"] and meta["source"] == "imagenet_captions"
        assert (meta["width"], meta["height"]) == (12, 9) == (row["width"], row["height"])
        seen += 1
    assert seen == len(expected)


def test_image_folder_layout_and_yfcc_tsv_give_the_same_pool(inputs, tmp_path):
    folder = write_inputs(tmp_path / "folder", layout="files")
    tsv = write_yfcc_tsv(tmp_path / "yfcc100m_dataset.tsv")
    out = tmp_path / "pool"
    run_imagenet_captions(folder["index"], tsv, folder["images"], out, ImagenetCaptionsConfig())
    _check_exact(_rows(out))


def test_caption_format_is_configurable(inputs, tmp_path):
    plain = ImagenetCaptionsConfig(
        parts=[{"field": "title"}, {"field": "tags"}],
        separator=" | ",
        max_tags=2,
        url_encoded=["title", "tags"],
    )
    run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], tmp_path / "a", plain)
    caps = {r["image_id"]: r["caption"] for r in _rows(tmp_path / "a") if r["status"] == "success"}
    assert caps["n01_1"] == "Reflected Duck | lake, water"
    keep_empty = ImagenetCaptionsConfig(skip_empty=False)
    run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], tmp_path / "b", keep_empty)
    caps = {r["image_id"]: r["caption"] for r in _rows(tmp_path / "b") if r["status"] == "success"}
    assert caps["n01_7"] == "Title: First. Description: . Tags:"
    raw = ImagenetCaptionsConfig(url_encoded=[])
    run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], tmp_path / "c", raw)
    caps = {r["image_id"]: r["caption"] for r in _rows(tmp_path / "c") if r["status"] == "success"}
    assert caps["n01_1"] == "Title: Reflected+Duck. Tags: lake, water, bird"


def test_rerun_resumes_and_other_settings_need_overwrite(inputs, tmp_path):
    out = tmp_path / "pool"
    cfg = ImagenetCaptionsConfig(shard_size=4)
    run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], out, cfg)
    again, report = run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], out, cfg)
    assert {o.status for o in again.outcomes} == {"skipped"} and report["samples"] == 5
    other = ImagenetCaptionsConfig(shard_size=4, separator=" / ")
    with pytest.raises(ImagenetCaptionsError, match="other inputs or settings"):
        run_imagenet_captions(inputs["index"], inputs["meta"], inputs["images"], out, other)
    _, report = run_imagenet_captions(
        inputs["index"], inputs["meta"], inputs["images"], out, other, overwrite=True
    )
    assert report["examples"][0].startswith("Title: Reflected Duck / Tags")


def test_bad_inputs_are_clear_errors(inputs, tmp_path):
    pq.write_table(pa.table({"image_id": ["a"], "label": [0]}), tmp_path / "bad_index.parquet")
    with pytest.raises(ImagenetCaptionsError, match="flickr_id"):
        run_imagenet_captions(
            tmp_path / "bad_index.parquet",
            inputs["meta"],
            inputs["images"],
            tmp_path / "o",
            ImagenetCaptionsConfig(),
        )
    pq.write_table(pa.table({"photo_id": [1]}), tmp_path / "bad_meta.parquet")
    with pytest.raises(ImagenetCaptionsError, match="title"):
        run_imagenet_captions(
            inputs["index"],
            tmp_path / "bad_meta.parquet",
            inputs["images"],
            tmp_path / "p",
            ImagenetCaptionsConfig(),
        )


def test_cleaning_functions():
    assert url_decode(pa.array(["a+b%2Bc", "%FF", None, "50%"])).to_pylist() == [
        "a b+c",
        "\ufffd",
        None,
        "50%",
    ]
    text = pa.array(["x &amp; y<br/>z", "&lt;i&gt;it&lt;/i&gt;", "a\n\t b", None, "see http://x.org/a now"])
    assert clean_text(text).to_pylist() == ["x & y z", "it", "a b", None, "see http://x.org/a now"]
    assert clean_text(text, remove_urls=True).to_pylist()[-1] == "see now"
    tags = pa.array(["a,b+c,,d", None, "", "x%2Cy"])
    assert clean_tags(tags, decode=True).to_pylist() == ["a, b c, d", None, "", "x,y"]
    assert clean_tags(tags, decode=True, max_tags=1).to_pylist() == ["a", None, "", "x,y"]


def test_cli(inputs, tmp_path):
    out = tmp_path / "cli"
    args = ["imagenet-captions", str(inputs["index"]), str(inputs["meta"]), "--images", str(inputs["images"])]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--set", "shard_size=6"])
    assert result.exit_code == 0, result.output
    _check_exact(_rows(out))
    assert len(list(out.glob("[0-9]*.tar"))) == 3
    with tarfile.open(out / "00000.tar") as tar:
        assert any(n.endswith(".cls") for n in tar.getnames())


# --------------------------------------------------------------- ids and text a real crawl has (issue 21)


def _statuses(inputs, tmp_path, flickr_ids: list) -> dict[str, tuple[str, str | None]]:
    """image_id -> (status, caption) of a run whose index gives the first cases these flickr ids."""
    ids = [c[0] for c in CASES[: len(flickr_ids)]]
    index = pa.table(
        {"image_id": ids, "label": pa.array([0] * len(ids), pa.int32()), "flickr_id": flickr_ids}
    )
    pq.write_table(index, tmp_path / "ids.parquet")
    out = tmp_path / "pool"
    report, _ = run_imagenet_captions(
        tmp_path / "ids.parquet", inputs["meta"], inputs["images"], out, ImagenetCaptionsConfig()
    )
    assert not report.failed
    Funnel.from_dict(json.loads((out / "report.json").read_text())["funnel"]).check()
    return {r["image_id"]: (r["status"], r["caption"]) for r in _rows(out)}  # ids are distinct here


@pytest.mark.parametrize("fid", ["101.7", "102.4"])
def test_a_fractional_flickr_id_is_bad_not_rounded(inputs, tmp_path, fid):
    # "101.7" must not become 102 (n01_2's photo) nor 101; either way it is no Flickr id
    rows = _statuses(inputs, tmp_path, [fid, "107"])
    assert rows["n01_1"] == ("bad_flickr_id", None)
    assert rows["n01_2"] == ("success", "Title: First")


def test_an_exponent_flickr_id_is_bad_not_parsed(inputs, tmp_path):
    rows = _statuses(inputs, tmp_path, ["1.01e2", "1e2", " 107 "])
    assert rows["n01_1"] == ("bad_flickr_id", None)  # 1.01e2 == 101 as a number: still not an id
    assert rows["n01_2"] == ("bad_flickr_id", None)
    assert rows["n01_3"] == ("success", "Title: First")  # spaces around digits are fine


def test_float_flickr_id_columns_accept_whole_numbers_only(inputs, tmp_path):
    rows = _statuses(inputs, tmp_path, pa.array([101.0, 101.5, None], pa.float64()))
    assert rows["n01_1"] == ("success", "Title: Reflected Duck. Tags: lake, water, bird")
    assert rows["n01_2"] == ("bad_flickr_id", None) and rows["n01_3"][0] == "no_flickr_id"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("I <3 my dog >_< and a < b > c", "I <3 my dog >_< and a < b > c"),  # look-alikes are text
        ("I &lt;3 my dog &gt;_&lt;", "I <3 my dog >_<"),  # escaped look-alikes too
        ("1<2 and 3>2", "1<2 and 3>2"),
    ],
)
def test_text_that_only_looks_like_markup_is_kept(raw, clean):
    assert clean_text(pa.array([raw])).to_pylist() == [clean]


@pytest.mark.parametrize(
    "raw", ["a&nbsp;&nbsp;b", "a\u00a0b", "a\u2009b", "a\u3000\u3000b", "a\u200b \u202fb", "a\u2028b"]
)
def test_every_unicode_space_becomes_one_ascii_space(raw):
    assert clean_text(pa.array([raw])).to_pylist() == ["a b"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<b>lake</b>!", "lake!"),
        ("<i>Reflected</i> <a href='x'>Duck</a>.", "Reflected Duck."),
        ("&lt;b&gt;bold&lt;/b&gt;!", "bold!"),
        ("hi<script>alert(1)</script> there", "hi there"),
    ],
)
def test_inline_tags_leave_no_space_block_tags_one(raw, clean):
    assert clean_text(pa.array([raw])).to_pylist() == [clean]


@pytest.mark.parametrize("raw", ["Potter\u02bcs wheel", "Potter\u00b4s wheel", "Potter\u2019s wheel"])
def test_apostrophe_variants_are_normalised(raw):
    assert clean_text(pa.array([raw])).to_pylist() == ["Potter's wheel"]


def test_a_separator_set_on_the_command_line_is_used_as_typed(inputs, tmp_path):
    out = tmp_path / "sep"
    args = ["imagenet-captions", str(inputs["index"]), str(inputs["meta"]), "--images", str(inputs["images"])]
    sets = ["--set", "separator= | ", "--set", "parts=[{field: title}, {field: tags}]"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), *sets])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert rows[0]["image_id"] == "n01_1" and rows[0]["caption"] == "Reflected Duck | lake, water, bird"


@pytest.mark.parametrize("layout", ["tars", "files"])
def test_inputs_and_pool_on_s3_give_the_local_pool(layout, s3, tmp_path):
    """Index, metadata (parquet, or the YFCC100M TSV) and images (tars, or ImageNet's folder of files)
    on S3, the pool written to S3: every object is the local build's, but for the recorded locations."""
    from curation.core import storage
    from tests.test_reshard_s3 import local_files, normalised, remote_files

    local = write_inputs(tmp_path / "in", layout=layout)
    if layout == "files":
        local["meta"] = write_yfcc_tsv(tmp_path / "in" / "yfcc100m_dataset.tsv")
    storage.upload_dir(tmp_path / "in", f"{s3.url}/in")
    remote = {k: f"{s3.url}/in/{v.relative_to(tmp_path / 'in').as_posix()}" for k, v in local.items()}
    cfg = ImagenetCaptionsConfig(shard_size=5)
    run_imagenet_captions(local["index"], local["meta"], local["images"], tmp_path / "pool", cfg)
    job, report = run_imagenet_captions(
        remote["index"], remote["meta"], remote["images"], f"{s3.url}/pool", cfg
    )
    assert not job.failed and report is not None and report["samples"] == 5
    shards = [storage.read_parquet(f"{s3.url}/pool/{s:05d}.parquet") for s in range(3)]
    _check_exact(pa.concat_tables(shards).to_pylist())
    want, got = local_files(tmp_path / "pool"), remote_files(f"{s3.url}/pool")
    assert sorted(got) == sorted(want) and "00002.tar" in got
    swap = {str(tmp_path / "in"): f"{s3.url}/in"}
    for name in want:
        if name == "_work/plan.parquet":  # image locations: local paths there, URLs here
            tables = [pq.read_table(pa.BufferReader(t[name])).to_pylist() for t in (want, got)]
            for row in tables[0]:
                for col in ("container", "path"):
                    row[col] = row[col] and row[col].replace(*next(iter(swap.items())))
            assert tables[0] == tables[1]
        elif name.endswith((".json", ".done")):
            assert normalised(name, got[name], swap) == normalised(name, want[name], swap), name
        elif name.endswith(".tar"):  # webdataset's TarWriter stamps members with the time of writing
            assert _members(got[name]) == _members(want[name]), name
        else:
            assert got[name] == want[name], name


def _members(tar_bytes: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
