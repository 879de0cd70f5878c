"""YFCC-hardmatch: whole-word class matching, ambiguity, outputs, report, accuracy, CLI.

(Over 400 lines: one file per command; its tests share the caption tables.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.builders.classvocab import Vocabulary, load_class_names, load_synonyms
from curation.builders.hardmatch import (
    ClassMatcher,
    HardmatchConfig,
    HardmatchError,
    HardmatchJob,
    decide,
    run_hardmatch,
)
from curation.builders.hardmatch_eval import read_labelled_captions, score_labels
from curation.builders.plurals import word_plurals
from curation.core.config import ConfigError
from curation.core.rowsource import RowSource
from curation.core.stats import Funnel
from curation.core.subset import Subset
from curation.core.uid import compute_uid
from curation.engines import run_job
from pipelines.app import app

CLASSES = ["circle", "star", "tree", "house", "fish", "mouse", "snow leopard", "leopard", "cup"]
SYNONYMS = {"tree": ["pine", "fir tree"], "cup": ["mug"], "star": ["starburst"]}
NAMING = [
    "a photo of a {x}",
    "{X} clipart free download",
    "Close-up of two {xs} on a white background",
    "my drawing of a {x} lol",
    "{x}, vector illustration (2019)",
    "Beautiful {X}!!! #art",
    "look at this {x}-shaped thing",
]
MULTI = ["a {x} next to a {y}", "{X} and {y} icons"]
JUNK = ["IMG_1234.JPG", "click here to buy now", "untitled image 0042", "hotdogs and starfishes", ""]
FOREIGN = ["Voici un joli dessin pour les enfants", "Ein Bild von meinem Urlaub"]


def _plural(name: str) -> str:
    return {"mouse": "mice", "fish": "fish", "snow leopard": "snow leopards"}.get(name, name + "s")


def write_crawl(root: Path, n: int = 3000, seed: int = 0) -> dict[str, Path]:
    """A crawl table with ground truth, shaped like the synthetic crawl's (uid, text, source)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    for i in range(n):
        cls = int(rng.integers(len(CLASSES)))
        name = CLASSES[cls]
        word = rng.choice(SYNONYMS[name]) if name in SYNONYMS and rng.random() < 0.2 else name
        kind = rng.choice(
            ["name", "multi", "mismatched", "junk", "foreign"], p=[0.74, 0.05, 0.04, 0.12, 0.05]
        )
        caption_class = name if kind in ("name", "multi") else None
        if kind == "name":
            t = str(rng.choice(NAMING))
            text = t.format(x=word, X=word.upper() if rng.random() < 0.3 else word.title(), xs=_plural(word))
        elif kind == "multi":
            other = CLASSES[(cls + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)]
            if {name, other} == {"snow leopard", "leopard"}:
                other = "cup"
            text = str(rng.choice(MULTI)).format(x=word, X=word.title(), y=other)
        elif kind == "mismatched":  # the caption of another picture: names a class the image does not show
            caption_class = "cup" if name != "cup" else "house"
            text = f"a photo of a {caption_class}"
        else:
            text = str(rng.choice(JUNK if kind == "junk" else FOREIGN))
        url = f"http://127.0.0.1/img/{i}.jpg"
        uid = compute_uid(url, text)
        rows.append({"url": url, "text": text, "uid": uid, "source": ["photo", "forum"][i % 2]})
        truth.append(
            {
                "uid": uid,
                "class_name": name,
                "label": cls,
                "caption_class": caption_class,
                "caption_names_class": kind in ("name", "multi"),
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), root / "crawl.parquet", row_group_size=700)
    pq.write_table(pa.Table.from_pylist(truth), root / "ground_truth.parquet")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    import yaml

    (root / "synonyms.yaml").write_text(yaml.safe_dump(SYNONYMS))
    return {k: root / f for k, f in [("crawl", "crawl.parquet"), ("gt", "ground_truth.parquet")]} | {
        "classes": root / "classnames.txt",
        "synonyms": root / "synonyms.yaml",
    }


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> dict[str, Path]:
    return write_crawl(tmp_path_factory.mktemp("crawl"))


def _cfg(crawl, **kw) -> HardmatchConfig:
    return HardmatchConfig(classes=str(crawl["classes"]), synonyms=crawl["synonyms"], **kw)


def _matcher(names, synonyms=None) -> ClassMatcher:
    return ClassMatcher(Vocabulary.build(names, synonyms or {}))


def _labels(matcher: ClassMatcher, captions: list[str | None], policy: str = "drop") -> list[str | None]:
    m = matcher.match(pa.array(captions, pa.string()))
    label, _ = decide(m, policy)
    return [matcher.vocab.class_names[x] if x >= 0 else None for x in label]


# ------------------------------------------------------------------------------- matching rules


def test_whole_words_case_folded_with_plurals_and_synonyms():
    m = _matcher(["dog", "mouse", "goose", "T-shirt", "potter's wheel", "box"], {"dog": ["puppy"]})
    caps = [
        "A DOG in the park",
        "hotdog stand",  # not a whole word
        "dogs",
        "three mice",
        "Geese flying",
        "my new t-shirts",
        "Potters Wheel for sale",
        "potter’s wheel",
        "two boxes",
        "puppies!",
        "dogged determination",
        "dog\nnewline",
        None,
    ]
    assert _labels(m, caps) == [
        "dog", None, "dog", "mouse", "goose", "T-shirt", "potter's wheel", "potter's wheel", "box", "dog",
        None, "dog", None,
    ]  # fmt: skip


def test_longest_name_wins_and_several_classes_are_ambiguous():
    m = _matcher(["snow leopard", "leopard", "cat", "dog"])
    caps = ["a snow leopard", "snow-leopards", "a leopard", "leopard and snow leopard", "cat dog", "cat cat"]
    assert _labels(m, caps) == ["snow leopard", "snow leopard", "leopard", None, None, "cat"]
    assert _labels(m, caps, "first") == ["snow leopard", "snow leopard", "leopard", "leopard", "cat", "cat"]
    res = m.match(pa.array(caps))
    _, reason = decide(res, "drop")
    assert reason.to_pylist() == [None, None, None, "ambiguous", "ambiguous", None]
    assert res.matched.to_pylist()[3] == [0, 1]


def test_unicode_and_odd_characters():
    m = _matcher(["café", "dog"])
    caps = ["CAFÉ de Paris", "Cafe", "ｄｏｇ (full width)", "x\x00dog", "dog—cat", "…", ""]
    m_res = m.match(pa.array(caps))
    label, reason = decide(m_res, "drop")
    names = [m.vocab.class_names[x] if x >= 0 else None for x in label]
    assert names == ["café", None, "dog", "dog", "dog", None, None]
    assert reason.to_pylist()[-2:] == ["empty_caption", "empty_caption"]


def test_plural_rules():
    assert word_plurals("bus") == ["buses"]
    assert word_plurals("fly") == ["flies"] and word_plurals("toy") == ["toys"]
    assert "wolves" in word_plurals("wolf") and "knives" in word_plurals("knife")
    assert "potatoes" in word_plurals("potato")
    assert word_plurals("mouse") == ["mice"] and word_plurals("sheep") == ["sheep"]
    assert set(word_plurals("goldfish")) == {"goldfish", "goldfishes"}


def test_imagenet_class_list_homonyms_and_nesting():
    names = load_class_names("imagenet")
    assert len(names) == 1000 and names[0] == "tench"
    vocab = Vocabulary.build(names, load_synonyms("conf/hardmatch/imagenet_synonyms.yaml", names))
    homonyms = {h["form"]: h["classes"] for h in vocab.homonyms()}
    assert homonyms["crane"] == ["crane bird", "construction crane"]
    assert "missile" not in homonyms  # duplicate class names are merged (test_duplicate_class_names_...)
    nested = {(r["form"], r["inside"]) for r in vocab.nested()}
    assert ("leopard", "snow leopard") in nested
    m = ClassMatcher(vocab)
    caps = ["my golden retriever, 3 months old", "a crane over the lake", "kite flying", "Saint Bernard pup"]
    assert _labels(m, caps) == ["Golden Retriever", None, "kite (bird of prey)", "St. Bernard"]


def test_synonyms_must_name_known_classes(tmp_path):
    bad = tmp_path / "syn.yaml"
    bad.write_text("not a class: [x]\n")
    with pytest.raises(ConfigError, match="unknown classes"):
        load_synonyms(bad, ["dog"])


# ------------------------------------------------------------------------------------- the job


def test_run_writes_subset_labels_and_a_balanced_report(crawl, tmp_path):
    out = tmp_path / "hm"
    job_report, report = run_hardmatch(crawl["crawl"], _cfg(crawl), out, ground_truth=crawl["gt"])
    assert not job_report.failed and report is not None
    Funnel(job_report.stats).check()
    stage = job_report.stats[0]
    assert stage.total.seen == 3000
    assert set(stage.total.dropped) <= {"no_class_match", "ambiguous", "empty_caption"}
    assert stage.total.dropped["ambiguous"] > 0 and stage.total.dropped["no_class_match"] > 0
    assert set(stage.by_source) == {"photo", "forum"}

    labels = pq.read_table(out / "labels.parquet")
    subset = Subset.load(out / "hardmatch.npy")
    assert labels.column_names == ["uid", "label", "class_name", "source", "form"]
    assert labels["uid"].to_pylist() == subset.hex()  # same uids, same (sorted) order
    assert len(subset) == stage.total.kept
    names = (out / "classnames.txt").read_text().split("\n")[:-1]
    assert names == CLASSES
    assert all(
        names[lbl] == c
        for lbl, c in zip(labels["label"].to_pylist(), labels["class_name"].to_pylist(), strict=True)
    )

    gt = report["ground_truth"]
    assert gt["precision"] >= 0.95 and gt["recall"] >= 0.9, gt
    assert gt["precision_vs_caption_class"] == 1.0  # the matcher is right about what captions say
    truth = pq.read_table(crawl["gt"]).to_pandas().set_index("uid")
    lab = labels.to_pandas().set_index("uid")
    expected_image_precision = (lab["class_name"] == truth.loc[lab.index, "class_name"]).mean()
    assert gt["precision_vs_image_class"] == pytest.approx(expected_image_precision, abs=1e-6)
    assert gt["precision_vs_image_class"] < 1.0  # mismatched captions: labelled as what they say
    assert gt["naming_own_class_but_ambiguous"] > 0  # the multi-class captions
    assert gt["recall_single_class_captions"] == 1.0  # every caption naming only its class is found
    saved = json.loads((out / "report.json").read_text())
    assert saved["labelled"] == stage.total.kept
    per_class = {r["class_name"]: r for r in saved["per_class"]}
    assert sum(r["labelled"] for r in per_class.values()) == stage.total.kept
    assert saved["ambiguous_captions"] == stage.total.dropped["ambiguous"]
    assert saved["most_ambiguous_classes"] and saved["most_cooccurring_pairs"]
    assert {
        "form": "leopard",
        "class": "leopard",
        "inside": "snow leopard",
        "inside_class": "snow leopard",
    } in saved["nested_names"]
    assert saved["throughput"]["captions_per_s"] > 0
    md = (out / "report.md").read_text()
    assert "precision" in md and "Most ambiguous classes" in md


def test_labels_agree_with_ground_truth_caption_by_caption(crawl, tmp_path):
    out = tmp_path / "hm"
    run_hardmatch(crawl["crawl"], _cfg(crawl), out)
    labels = dict(
        zip(
            *pq.read_table(out / "labels.parquet", columns=["uid", "class_name"]).to_pydict().values(),
            strict=True,
        )
    )
    gt = pq.read_table(crawl["gt"]).to_pylist()
    crawl_rows = {r["uid"]: r["text"] for r in pq.read_table(crawl["crawl"]).to_pylist()}
    for row in gt:
        text = crawl_rows[row["uid"]]
        if row["uid"] in labels:
            assert labels[row["uid"]] == row["caption_class"], text
        elif row["caption_names_class"]:
            assert " and " in text or "next to" in text, text  # only multi-class captions are dropped


def test_first_policy_keeps_ambiguous_captions(crawl, tmp_path):
    _, drop = run_hardmatch(crawl["crawl"], _cfg(crawl), tmp_path / "drop")
    _, first = run_hardmatch(crawl["crawl"], _cfg(crawl, ambiguous="first"), tmp_path / "first")
    assert first["labelled"] == drop["labelled"] + drop["dropped"]["ambiguous"]
    assert "ambiguous" not in first["dropped"]


def test_pool_input_counts_only_downloaded_samples(metadata_pool, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("star\ncircle\nsquare\n")
    _, report = run_hardmatch(metadata_pool, HardmatchConfig(classes=str(classes)), tmp_path / "out")
    source = RowSource.open(metadata_pool)
    n = sum(source.read(s).num_rows for s in source.shards())
    assert report["input_captions"] == n
    assert report["funnel"]["by_source"].keys() == {"photo", "forum"}


def test_rerun_skips_shards_and_refuses_other_settings(crawl, tmp_path):
    out = tmp_path / "hm"
    run_hardmatch(crawl["crawl"], _cfg(crawl), out)
    again, report = run_hardmatch(crawl["crawl"], _cfg(crawl), out)
    assert {o.status for o in again.outcomes} == {"skipped"} and report["input_captions"] == 3000
    with pytest.raises(HardmatchError, match="another input or config"):
        run_hardmatch(crawl["crawl"], _cfg(crawl, ambiguous="first"), out)
    _, first = run_hardmatch(crawl["crawl"], _cfg(crawl, ambiguous="first"), out, overwrite=True)
    assert "ambiguous" not in first["dropped"]


def test_two_workers_give_the_same_match_tables(crawl, tmp_path):
    cfg = _cfg(crawl)
    one = HardmatchJob(RowSource.open(crawl["crawl"]), cfg, tmp_path / "one")
    two = HardmatchJob(RowSource.open(crawl["crawl"]), cfg, tmp_path / "two")
    r1, r2 = run_job(one, "local"), run_job(two, "local", workers=2)
    assert [s.to_dict()["by_source"] for s in r1.stats] == [s.to_dict()["by_source"] for s in r2.stats]
    for shard in one.shards():
        a = pq.read_table(tmp_path / "one" / "matches" / f"{shard}.parquet")
        b = pq.read_table(tmp_path / "two" / "matches" / f"{shard}.parquet")
        assert a.equals(b)


def test_cli_with_a_class_file_and_ground_truth(crawl, tmp_path):
    out = tmp_path / "cli"
    args = ["hardmatch", str(crawl["crawl"]), "--classes", str(crawl["classes"]), "--out", str(out)]
    result = CliRunner().invoke(
        app, [*args, "--synonyms", str(crawl["synonyms"]), "--ground-truth", str(crawl["gt"])]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["synonyms"] == str(crawl["synonyms"])
    assert report["ground_truth"]["precision"] >= 0.95
    bad = CliRunner().invoke(app, [*args, "--ambiguous", "maybe", "--overwrite"])
    assert bad.exit_code != 0


def test_row_sources_read_pools_files_and_folders(tmp_path):
    rows = pa.table(
        {
            "url": [f"http://127.0.0.1/{i}" for i in range(6)],
            "caption": ["a dog", "two cats", None, "x", "y", "z"],
            "status": ["success", "success", "success", "failed_to_download", "success", "success"],
            "extra": list(range(6)),
        }
    )
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(rows, pool / "00000.parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    pq.write_table(rows.slice(0, 3), folder / "part-a.parquet")
    pq.write_table(rows.slice(3), folder / "part-b.parquet")
    pq.write_table(
        rows.rename_columns(["url", "text", "status", "extra"]), tmp_path / "t.parquet", row_group_size=2
    )
    expected_uids = [
        compute_uid(u, c)
        for u, c, s in zip(*[rows[k].to_pylist() for k in ("url", "caption", "status")], strict=True)
        if s == "success"
    ]
    for path, kind, n_shards in (
        (pool, "pool", 1),
        (folder, "folder", 2),
        (tmp_path / "t.parquet", "file", 3),
    ):
        src = RowSource.open(path)
        assert (src.kind, len(src.shards())) == (kind, n_shards)
        got = [u for s in src.shards() for u in src.read(s, ["uid", "caption"])["uid"].to_pylist()]
        assert got == expected_uids  # derived from url + caption, failures left out
        only_uid = src.read(src.shards()[0], ["uid"])
        assert only_uid.column_names[-1] == "uid" and "extra" not in only_uid.column_names
    with pytest.raises(ValueError, match="no parquet"):
        RowSource.open(tmp_path / "empty_dir" if (tmp_path / "empty_dir").mkdir() is None else tmp_path)


# ------------------------------------------------------------- rows a real crawl gets wrong (issue 21)

HEX = [compute_uid(f"http://127.0.0.1/{i}.jpg", "c") for i in range(8)]


def _run_table(tmp_path: Path, uids: list[str | None], captions: list[str], names=("dog", "cat")):
    """Hardmatch over a one-file parquet (no url column) with the given uids and captions."""
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), "caption": captions}), path)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n")
    out = tmp_path / "hm"
    job_report, report = run_hardmatch(path, HardmatchConfig(classes=str(classes)), out)
    assert not job_report.failed, job_report.failed
    assert report is not None
    return out, report, job_report


def _reasons(out: Path) -> list[str | None]:
    return pq.read_table(sorted((out / "matches").glob("*.parquet"))[0])["reason"].to_pylist()


def test_a_null_uid_is_a_bad_uid_drop_not_a_failed_shard(tmp_path):
    out, report, job_report = _run_table(tmp_path, [HEX[0], None, HEX[2]], ["a dog", "a dog", "a cat"])
    assert _reasons(out) == [None, "bad_uid", None]
    assert report["labelled"] == 2 and report["dropped"] == {"bad_uid": 1}
    assert report["funnel"]["seen"] == 3  # every row accounted for
    assert job_report.stats[0].total.dropped == {"bad_uid": 1}
    assert len(Subset.load(out / "hardmatch.npy")) == 2


def test_a_non_hex_uid_is_a_bad_uid_drop_not_a_traceback(tmp_path):
    uids = [HEX[0], "z" * 32, "abc", HEX[3].upper()]
    out, report, _ = _run_table(tmp_path, uids, ["a dog", "a dog", "a cat", "a cat"])
    assert _reasons(out) == [None, "bad_uid", "bad_uid", None]
    labels = pq.read_table(out / "labels.parquet")
    assert sorted(labels["uid"].to_pylist()) == sorted([HEX[0], HEX[3]])  # upper case uid kept, lowered
    assert report["dropped"] == {"bad_uid": 2}


def test_a_uid_repeated_with_different_captions_is_a_duplicate_uid_drop(tmp_path):
    uids = [HEX[0], HEX[1], HEX[0], HEX[1], HEX[0]]
    caps = ["a dog", "a cat", "a cat", "a cat", "nothing"]  # HEX[0]: dog, then cat, then no match
    out, report, job_report = _run_table(tmp_path, uids, caps)
    labels = pq.read_table(out / "labels.parquet").to_pylist()
    assert {(r["uid"], r["class_name"]) for r in labels} == {(HEX[0], "dog"), (HEX[1], "cat")}
    # the report counts what the subset holds, the funnel balances, and the conflict is said
    assert report["labelled"] == 2 == len(Subset.load(out / "hardmatch.npy"))
    assert report["dropped"] == {"duplicate_uid": 3}
    assert report["repeated_uids"] == 3 and report["conflicting_uids"] == 1
    assert job_report.stats[0].to_dict() == report["funnel"]  # what the CLI and job files print
    assert sum(r["labelled"] for r in report["per_class"]) == 2
    assert "duplicate_uid" in (out / "report.md").read_text()


def test_harvestmen_names_harvestman():
    assert "harvestmen" in word_plurals("harvestman") and word_plurals("human") == ["humans"]
    m = _matcher(["harvestman", "fireman", "human"])
    assert _labels(m, ["Harvestmen on a wall", "two firemen", "humans", "humen"]) == [
        "harvestman", "fireman", "human", None,
    ]  # fmt: skip


def test_duplicate_class_names_are_merged_and_labelled(caplog):
    names = load_class_names("imagenet")
    assert names[836] == names[837] == "sunglasses" and names[657] == names[744] == "missile"
    with caplog.at_level("WARNING"):
        vocab = Vocabulary.build(names)
    assert "both named 'sunglasses'" in caplog.text
    assert vocab.merged == {744: 657, 837: 836}
    m = ClassMatcher(vocab)
    label, reason = decide(m.match(pa.array(["new sunglasses", "a missile launch", "Missiles"])), "drop")
    assert label.tolist() == [836, 657, 657] and reason.to_pylist() == [None, None, None]
    assert {"name": "missile", "label": 744, "labelled_as": 657} in vocab.merged_classes()


@pytest.mark.parametrize("caption", ["Potter\u02bcs wheel", "potter\u00b4s wheel", "potter\u2032s wheel"])
def test_apostrophe_variants_match_a_possessive_class_name(caption):
    m = _matcher(["potter's wheel", "wheel"])
    assert _labels(m, [caption]) == ["potter's wheel"]


def test_hand_labelled_captions_precision_and_recall():
    """tests/data/hardmatch_captions.tsv: 123 tricky captions labelled by hand (see docs/builders.md)."""
    captions, gold = read_labelled_captions(Path(__file__).parent / "data" / "hardmatch_captions.tsv")
    assert len(captions) >= 100
    names = load_class_names("imagenet")
    m = ClassMatcher(Vocabulary.build(names, load_synonyms("conf/hardmatch/imagenet_synonyms.yaml", names)))
    label, _ = decide(m.match(pa.array(captions, pa.string())), "drop")
    scores = score_labels([names[x] if x >= 0 else None for x in label], gold)
    assert scores["precision"] >= 0.98 and scores["recall"] >= 0.9, scores


def test_hardmatch_on_a_pool_on_s3_writes_the_local_outputs(crawl, s3, tmp_path):
    """A pool, class list, synonyms and ground truth on S3, the output on S3: the subset, labels and
    match tables are the local run's bytes; records differ only by the locations and timings."""
    from curation.builders.stage import HardmatchInputs, run_hardmatch_stage
    from curation.core import storage
    from tests.test_reshard_s3 import TIMES, local_files, normalised, remote_files

    table = pq.read_table(crawl["crawl"])
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):  # a metadata pool (DataComp layout: no status column, no tars)
        pq.write_table(table.slice(i * 1000, 1000), pool / f"{i:05d}.parquet")
    storage.upload_dir(pool, f"{s3.url}/pool")
    remote = {k: f"{s3.url}/conf/{crawl[k].name}" for k in ("gt", "classes", "synonyms")}
    for key, url in remote.items():
        storage.write_bytes(url, crawl[key].read_bytes())
    run_hardmatch(pool, _cfg(crawl), tmp_path / "hm", ground_truth=crawl["gt"])
    inputs = HardmatchInputs(input=f"{s3.url}/pool", out=f"{s3.url}/hm", ground_truth=remote["gt"])
    cfg = HardmatchConfig(classes=remote["classes"], synonyms=remote["synonyms"])
    result = run_hardmatch_stage(inputs, cfg, "local")  # type: ignore[arg-type]
    assert result.summary["subset"] == f"{s3.url}/hm/hardmatch.npy"
    assert len(Subset.load(result.summary["subset"])) > 1000
    want, got = local_files(tmp_path / "hm"), remote_files(f"{s3.url}/hm")
    assert sorted(got) == sorted(want)
    swaps = {str(pool.resolve()): f"{s3.url}/pool"} | {str(crawl[k]): remote[k] for k in remote}
    timings = (*TIMES, "match_seconds", "captions_per_s")
    for name in want:
        if name.endswith((".json", ".done")):
            assert normalised(name, got[name], swaps, timings) == normalised(name, want[name], swaps, timings)
        elif name == "report.md":  # the one line with a timing differs
            lines = [[ln for ln in t[name].decode().splitlines() if "speed" not in ln] for t in (got, want)]
            assert lines[0] == lines[1] and len(lines[0]) > 10
        else:  # hardmatch.npy, labels.parquet, classnames.txt, matches/NNNNN.parquet
            assert got[name] == want[name], name
    assert {"hardmatch.npy", "labels.parquet", "matches/00002.parquet"} <= set(got)
