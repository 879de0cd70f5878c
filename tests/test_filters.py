"""Quality filters: each rule on its edge cases, the global-view filters across shards, the funnel.

(Over 400 lines: one file for the filter job; its tests share the pool fixtures.)
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq
import pytest

from curation.core.config import ConfigError, load_config
from curation.core.pool import Pool
from curation.core.stats import Funnel
from curation.core.uid import compute_uid
from curation.engines import run_job
from curation.filtering.global_view import write_shard_lookups
from curation.filtering.job import FilterJob, FilterJobConfig, build_filter

DATA = Path(__file__).parent / "data"
CONF = Path(__file__).resolve().parent.parent / "conf" / "filters"
DIM = 32
N_SHARDS, PER_SHARD = 3, 60
SCORE = "clip_score_vit_b_32"  # the score stage writes this column into attributes/<same name>/


def multilingual() -> pa.Table:
    """Real web-like captions in English, French, German, Spanish and Italian (``lang``, ``caption``)."""
    opts = pv.ParseOptions(delimiter="\t", quote_char=False)
    return pv.read_csv(DATA / "captions_5lang.tsv", parse_options=opts)


def emb_list(vectors: np.ndarray) -> pa.Array:
    """The scoring stage's layout: a fixed-size list of float16 per sample."""
    flat = pa.array(vectors.astype(np.float16).ravel(), pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_pool(root: Path, seed: int = 0) -> dict[str, dict]:
    """An img2dataset-like pool (parquet only) plus a scoring stage's attributes, with known junk.

    Returns ground truth per uid: ``exact_of`` / ``near_of`` (the original's uid), ``lang``.
    """
    rng = np.random.default_rng(seed)
    caps = multilingual()
    texts, langs = caps["caption"].to_pylist(), caps["lang"].to_pylist()
    truth: dict[str, dict] = {}
    originals: list[tuple[str, str, np.ndarray]] = []  # (uid, sha256, embedding) of clean samples
    shards = []
    for s in range(N_SHARDS):
        rows, embs = [], []
        for i in range(PER_SHARD):
            url = f"http://127.0.0.1/img/{s}/{i}.jpg"
            j = int(rng.integers(len(texts)))
            caption, lang = texts[j], langs[j]
            kind = rng.choice(["clean", "exact", "near", "failed", "nohash"], p=[0.7, 0.1, 0.1, 0.05, 0.05])
            if kind in ("exact", "near") and not originals:
                kind = "clean"
            uid = compute_uid(url, caption)
            sha = hashlib.sha256(url.encode()).hexdigest()
            emb = unit(rng, 1)[0]
            entry = {"lang": lang, "exact_of": None, "near_of": None, "source": ["photo", "forum"][i % 2]}
            if kind == "exact":
                orig = originals[int(rng.integers(len(originals)))]
                sha, emb, entry["exact_of"] = orig[1], orig[2], orig[0]
            elif kind == "near":
                orig = originals[int(rng.integers(len(originals)))]
                emb = orig[2] + rng.normal(scale=0.02, size=DIM)
                emb, entry["near_of"] = emb / np.linalg.norm(emb), orig[0]
            elif kind == "clean":
                originals.append((uid, sha, emb))
            ok = kind != "failed"
            w, h = int(rng.integers(100, 600)), int(rng.integers(100, 600))
            rows.append(
                {
                    "key": f"{s:05d}{i:04d}",
                    "url": url,
                    "caption": caption,
                    "status": "success" if ok else "failed_to_download",
                    "error_message": None if ok else "HTTP Error 404: Not Found",
                    "width": min(w, 256) if ok else None,
                    "height": min(h, 256) if ok else None,
                    "original_width": w if ok else None,
                    "original_height": h if ok else None,
                    "sha256": sha if ok and kind != "nohash" else None,
                    "uid": uid,
                    "source": entry["source"],
                }
            )
            if ok:
                truth[uid] = entry
                embs.append((uid, emb, float(rng.uniform(0.1, 0.4))))
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
        shards.append(embs)
    root.mkdir(parents=True, exist_ok=True)
    score_dir = root / "attributes" / SCORE
    score_dir.mkdir(parents=True)
    for s, embs in enumerate(shards):
        embs = embs[:-1]  # the scorer could not decode the last image of every shard: no row at all
        table = pa.table(
            {
                "uid": [e[0] for e in embs],
                "image_emb": emb_list(np.stack([e[1] for e in embs])),
                SCORE: pa.array([np.nan if k == 0 else e[2] for k, e in enumerate(embs)], pa.float32()),
            }
        )
        pq.write_table(table, score_dir / f"{s:05d}.parquet")
    return truth


@pytest.fixture
def pool(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    root = tmp_path / "pool"
    root.mkdir()
    return root, write_pool(root)


def run(
    root: Path, specs: list[dict], name: str = "filters", engine: str = "local", **kw
) -> tuple[pa.Table, Funnel]:
    report = run_job(FilterJob(root, specs, name), engine, **kw)
    assert not report.failed, [o.error for o in report.failed]
    funnel = report.funnel()
    funnel.check()
    return Pool(root).read_attributes(name), funnel


def verdicts(table: pa.Table, name: str) -> dict[str, tuple[bool, str | None]]:
    return dict(
        zip(
            table["uid"].to_pylist(),
            zip(table[f"{name}_keep"].to_pylist(), table[f"{name}_reason"].to_pylist(), strict=True),
            strict=True,
        )
    )


def apply(spec: dict, columns: dict) -> pa.RecordBatch:
    return build_filter(spec).apply(pa.RecordBatch.from_pydict(columns))


# ---------------------------------------------------------------- image size


def test_image_size_rules_on_edge_cases():
    out = apply(
        {"kind": "image_size"},
        {
            "original_width": pa.array([200, 199, 600, 601, 200, 0, None, 300, 200], pa.int64()),
            "original_height": pa.array([200, 400, 200, 200, 600, 300, 300, 301, 601], pa.int64()),
        },
    )
    assert out["image_size_reason"].to_pylist() == [
        None,  # exactly the minimum side
        "too_small",
        None,  # aspect exactly 3
        "extreme_aspect",  # 3.005
        None,  # portrait, aspect exactly 3
        "missing_size",  # zero width
        "missing_size",  # unknown width
        None,
        "extreme_aspect",  # portrait 3.005
    ]
    assert out["image_size_keep"].to_pylist() == [r is None for r in out["image_size_reason"].to_pylist()]
    assert out["image_aspect"].to_pylist()[2] == pytest.approx(3.0)
    assert out["image_short_side"].to_pylist()[6] is None


def test_image_size_falls_back_to_resized_size_and_says_so(caplog):
    cols = {
        "original_width": pa.array([None, 300], pa.float64()),
        "original_height": pa.array([None, 300], pa.float64()),
        "width": pa.array([256, 256], pa.int64()),
        "height": pa.array([64, 256], pa.int64()),
    }
    out = apply({"kind": "image_size", "min_side": 32}, cols)
    assert out["image_size_reason"].to_pylist() == ["extreme_aspect", None]
    assert out["image_size_from"].to_pylist() == ["resized", "original"]
    assert "no original size" in caplog.text
    strict = apply({"kind": "image_size", "min_side": 32, "fallback_to_resized": False}, cols)
    assert strict["image_size_reason"].to_pylist() == ["missing_size", None]


def test_image_size_without_any_size_column_gives_reasons_not_a_crash():
    out = apply({"kind": "image_size"}, {"caption": ["a", "b"]})
    assert out["image_size_reason"].to_pylist() == ["missing_size", "missing_size"]


# ---------------------------------------------------------------- language


def test_language_filter_drops_foreign_captions_and_keeps_english():
    caps = multilingual()
    out = apply({"kind": "language"}, {"caption": caps["caption"].combine_chunks()})
    gold = np.array(caps["lang"].to_pylist())
    keep = np.array(out["language_keep"].to_pylist())
    foreign = gold != "en"
    assert keep[foreign].mean() <= 0.05  # >= 95% of foreign captions dropped
    assert keep[~foreign].mean() >= 0.98  # <= 2% of English ones
    assert set(np.array(out["language_reason"].to_pylist(), dtype=object)[foreign & ~keep]) == {
        "wrong_language"
    }
    detected = np.array(out["lang"].to_pylist())
    assert (detected[foreign] == gold[foreign]).mean() >= 0.9
    assert all(0.0 < s <= 1.0 for s in out["lang_score"].to_pylist())


def test_language_keep_list_threshold_and_missing_captions():
    captions = [
        "Une photo d'un chat noir sur le canapé",
        "A black cat sleeping on the sofa",
        None,
        "   ",
        "A black cat\nsleeping on the sofa",
        "ok",
    ]
    out = apply({"kind": "language", "keep": ["fr"]}, {"caption": captions})
    reasons = out["language_reason"].to_pylist()
    assert reasons[:5] == [None, "wrong_language", "missing_caption", "missing_caption", "wrong_language"]
    assert out["lang"].to_pylist()[2] is None and out["lang_score"].to_pylist()[3] is None
    strict = apply({"kind": "language", "min_score": 0.999}, {"caption": captions})
    en_reasons = strict["language_reason"].to_pylist()
    assert en_reasons[1] == "low_lang_confidence" and en_reasons[0] == "wrong_language"


def test_language_filter_rejects_a_missing_model(tmp_path):
    f = build_filter({"kind": "language", "model_path": str(tmp_path / "lid.176.bin")})
    with pytest.raises(FileNotFoundError, match="language model not found"):
        f.setup()


# ---------------------------------------------------------------- CLIP score


def test_clip_score_from_an_attribute_table_with_missing_and_nan_scores(pool):
    root, truth = pool
    table, _ = run(root, [{"kind": "clip_score", "min_score": 0.25}])
    scores = pc.fill_null(
        pq.read_table(root / "attributes" / SCORE / "00000.parquet")[SCORE], np.nan
    ).to_numpy()
    reasons = table["clip_score_reason"].to_pylist()
    assert table.num_rows == len(truth)
    assert reasons.count("missing_score") == 2 * N_SHARDS  # one NaN and one absent row per shard
    by_uid = verdicts(table, "clip_score")
    attr = pq.read_table(root / "attributes" / SCORE / "00000.parquet")
    for uid, s in zip(attr["uid"].to_pylist(), scores, strict=True):
        keep, reason = by_uid[uid]
        expected = "missing_score" if np.isnan(s) else ("low_clip_score" if s < 0.25 else None)
        assert reason == expected and keep == (expected is None)


def test_clip_score_on_a_pool_column_and_a_missing_attribute_is_a_clear_failure(pool):
    root, _ = pool
    out = apply(
        {"kind": "clip_score", "from_pool": True, "column": "clip_b32_similarity_score"},
        {"clip_b32_similarity_score": pa.array([0.3, 0.2, None, float("nan")], pa.float64())},
    )
    assert out["clip_score_reason"].to_pylist() == [None, "low_clip_score", "missing_score", "missing_score"]
    report = run_job(FilterJob(root, [{"kind": "clip_score", "attribute": "nope"}]), "local", retries=0)
    assert len(report.failed) == N_SHARDS
    assert "attributes/nope/00000.parquet" in report.failed[0].error


# ---------------------------------------------------------------- exact duplicates


def test_exact_dedup_finds_every_duplicate_with_a_deterministic_representative(pool, tmp_path):
    root, truth = pool
    table, _ = run(root, [{"kind": "exact_dup"}])
    by_uid = verdicts(table, "exact_dup")
    dup_of = dict(zip(table["uid"].to_pylist(), table["exact_dup_of"].to_pylist(), strict=True))
    copies = {u: t["exact_of"] for u, t in truth.items() if t["exact_of"]}
    assert copies, "fixture has no exact duplicates"
    groups: dict[str, set[str]] = {}
    for copy, orig in copies.items():
        groups.setdefault(orig, {orig}).add(copy)
    for members in groups.values():
        rep = min(members)
        for m in members:
            assert by_uid[m] == ((True, None) if m == rep else (False, "exact_duplicate"))
            assert dup_of[m] == (None if m == rep else rep)
    unique = [u for u, t in truth.items() if not t["exact_of"] and u not in groups]
    hashes = {u: v for u, v in by_uid.items() if v[1] == "missing_hash"}
    assert hashes and all(by_uid[u] == (True, None) for u in unique if u not in hashes)
    assert sum(r == "exact_duplicate" for _, r in by_uid.values()) == sum(len(g) - 1 for g in groups.values())
    # the same verdicts from a copy of the pool run by two worker processes
    other = tmp_path / "copy"
    shutil.copytree(root, other)
    again, _ = run(other, [{"kind": "exact_dup"}], workers=2)
    assert again.sort_by("uid").equals(table.sort_by("uid"))


def test_exact_dedup_can_prefer_the_best_scored_copy(tmp_path):
    root = tmp_path / "p"
    (root / "attributes" / SCORE).mkdir(parents=True)
    uids = [f"{i:032x}" for i in range(8)]
    hashes = ["a", "a", "a", "a", "b", "b", "c", None]  # group a: NaN, 0.3, 0.5, no score row
    pq.write_table(pa.table({"uid": uids, "caption": ["x"] * 8, "sha256": hashes}), root / "00000.parquet")
    scores = pa.table({"uid": uids[:3] + uids[4:], SCORE: [np.nan, 0.3, 0.5, 0.2, 0.2, 0.9, 0.9]})
    pq.write_table(scores, root / "attributes" / SCORE / "00000.parquet")
    table, _ = run(root, [{"kind": "exact_dup", "prefer": {"column": SCORE}}])
    assert table["exact_dup_keep"].to_pylist() == [False, False, True, False, True, False, True, False]
    assert table["exact_dup_of"].to_pylist() == [uids[2], uids[2], None, uids[2], None, uids[4], None, None]
    assert table["exact_dup_group_size"].to_pylist() == [4, 4, 4, 4, 2, 2, 1, None]
    assert table["exact_dup_reason"].to_pylist()[-1] == "missing_hash"


def test_a_pool_without_hashes_is_a_clear_error(metadata_pool):
    with pytest.raises(ValueError, match="no 'sha256' column"):
        run_job(FilterJob(metadata_pool, [{"kind": "exact_dup"}]), "local")


# ---------------------------------------------------------------- near duplicates


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_near_dedup_groups_copies_and_records_similarity(pool, index):
    root, truth = pool
    spec = {"kind": "near_dup", "threshold": 0.95, "index": index, "nlist": 8, "nprobe": 8}
    table, _ = run(root, [spec])
    by_uid = verdicts(table, "near_dup")
    of = dict(zip(table["uid"].to_pylist(), table["near_dup_of"].to_pylist(), strict=True))
    # ground truth groups: near and exact copies hang off clean originals
    parent = {u: t["near_of"] or t["exact_of"] for u, t in truth.items()}
    groups: dict[str, set[str]] = {}
    for u, p in parent.items():
        if p:
            groups.setdefault(p, {p}).add(u)
    no_emb = {u for u, (_, r) in by_uid.items() if r == "missing_embedding"}
    assert len(no_emb) == N_SHARDS
    found = false = 0
    for members in groups.values():
        members -= no_emb
        rep = min(members)
        for m in members - {rep}:
            found += by_uid[m] == (False, "near_duplicate") and of[m] == rep
        assert by_uid[rep] == (True, None)
    in_groups = set().union(*groups.values())
    false = sum(r == "near_duplicate" for u, (_, r) in by_uid.items() if u not in in_groups)
    assert found == sum(len(g) - 1 for g in groups.values()) and false == 0
    sims = np.array(table["near_dup_nn_sim"].to_pylist(), dtype=float)
    dropped = np.array([r == "near_duplicate" for r in table["near_dup_reason"].to_pylist()])
    assert (sims[dropped] >= 0.95).all() and np.nanmax(
        sims[~dropped & (table["near_dup_group_size"].to_numpy() == 1)]
    ) < 0.95


def test_nan_and_missing_embeddings_get_a_reason(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    uids = [f"{i:032x}" for i in range(6)]
    pq.write_table(pa.table({"uid": uids, "caption": ["x"] * 6, "sha256": ["h"] * 6}), root / "00000.parquet")
    vecs = unit(np.random.default_rng(0), 6)
    vecs[1] = np.nan
    vecs[2] = 0.0
    (root / "attributes" / SCORE).mkdir(parents=True)
    emb = pa.array([*emb_list(vecs).to_pylist()[:4], None, [1.0, 2.0]], pa.list_(pa.float16()))
    pq.write_table(pa.table({"uid": uids, "image_emb": emb}), root / "attributes" / SCORE / "00000.parquet")
    table, _ = run(root, [{"kind": "near_dup"}])
    assert table["near_dup_reason"].to_pylist() == [
        None,
        *["missing_embedding"] * 2,
        None,
        *["missing_embedding"] * 2,
    ]


# ---------------------------------------------------------------- image clusters


def test_image_clustering_keeps_the_target_clusters(tmp_path):
    rng = np.random.default_rng(3)
    centres = unit(rng, 6)
    root = tmp_path / "p"
    (root / "attributes" / SCORE).mkdir(parents=True)
    labels = {}
    for s in range(2):
        cluster = rng.integers(0, 6, size=120)
        vecs = centres[cluster] + rng.normal(scale=0.05, size=(120, DIM))
        uids = [compute_uid(f"u{s}/{i}", "c") for i in range(120)]
        labels.update(zip(uids, cluster.tolist(), strict=True))
        pq.write_table(pa.table({"uid": uids, "caption": ["c"] * 120}), root / f"{s:05d}.parquet")
        table = pa.table({"uid": uids[:-1], "image_emb": emb_list(vecs[:-1])})  # last one: no embedding
        pq.write_table(table, root / "attributes" / SCORE / f"{s:05d}.parquet")
    target = centres[[1, 4]].repeat(10, axis=0) + rng.normal(scale=0.05, size=(20, DIM))
    np.save(tmp_path / "target.npy", target.astype(np.float32))
    spec = {"kind": "image_cluster", "target": str(tmp_path / "target.npy"), "k": 6, "seed": 0, "niter": 25}
    table, _ = run(root, [spec])
    by_uid = verdicts(table, "image_cluster")
    missing = {u for u, (_, r) in by_uid.items() if r == "missing_embedding"}
    assert len(missing) == 2
    for uid, (keep, reason) in by_uid.items():
        if uid not in missing:
            assert keep == (labels[uid] in (1, 4)), (labels[uid], reason)
            assert reason in (None, "off_target_cluster")
    assert len(set(table["image_cluster_id"].drop_null().to_pylist())) == 6
    assert (root / "attributes" / "filters" / "_prepared" / "image_cluster" / "centroids.npy").exists()
    with pytest.raises(ValueError, match="lower k"):
        run_job(FilterJob(root, [{**spec, "k": 1000}], name="too_many"), "local")


# ---------------------------------------------------------------- the job, the funnel, configs


ALL = [
    {"kind": "caption_length", "name": "caption"},
    {"kind": "image_size", "min_side": 150},
    {"kind": "language"},
    {"kind": "clip_score", "min_score": 0.2},
    {"kind": "exact_dup"},
    {"kind": "near_dup"},
]


def test_the_funnel_balances_after_every_filter_per_source(pool):
    root, truth = pool
    table, funnel = run(root, ALL)
    assert [s.stage for s in funnel.stages] == [
        "caption",
        "image_size",
        "language",
        "clip_score",
        "exact_dup",
        "near_dup",
    ]
    assert funnel.stages[0].total.seen == len(truth) == table.num_rows
    alive = np.ones(table.num_rows, dtype=bool)
    sources = np.array(table["source"].to_pylist())
    for stage in funnel.stages:
        keep = table[f"{stage.stage}_keep"].to_numpy()
        for src in ("photo", "forum"):
            counts = stage.by_source[src]
            assert counts.seen == int((alive & (sources == src)).sum())
            assert counts.kept == int((alive & keep & (sources == src)).sum())
        alive &= keep
    assert funnel.stages[-1].total.kept == int(alive.sum()) > 0
    assert not any(":" in c for c in table.column_names)  # joined inputs are not written back


def test_phase_one_is_reused_on_rerun_and_a_changed_config_is_refused(pool):
    root, _ = pool
    specs = [{"kind": "exact_dup"}, {"kind": "near_dup"}]
    run(root, specs)
    marker = root / "attributes" / "filters" / "_prepared" / "near_dup" / "_done.json"
    first = marker.stat().st_mtime_ns
    shutil.rmtree(root / "attributes" / "filters" / "_done")  # force the shards to run again
    run(root, specs)
    assert marker.stat().st_mtime_ns == first
    shutil.rmtree(root / "attributes" / "filters" / "_done")
    with pytest.raises(ConfigError, match="different config"):
        run_job(FilterJob(root, [{"kind": "exact_dup"}, {"kind": "near_dup", "threshold": 0.9}]), "local")


def test_write_shard_lookups_writes_every_shard_and_refuses_disorder(tmp_path):
    schema = pa.schema([("uid", pa.string()), ("v", pa.int64())])
    rows = pa.table({"shard": ["00000", "00002", "00002"], "uid": ["a", "b", "c"], "v": [1, 2, 3]})
    write_shard_lookups(tmp_path, ["00000", "00001", "00002"], rows.to_batches(max_chunksize=1), schema)
    assert [pq.read_table(tmp_path / f"0000{i}.parquet").num_rows for i in range(3)] == [1, 0, 2]
    with pytest.raises(ValueError, match="shard order"):
        write_shard_lookups(tmp_path / "x", ["00000", "00002"], rows.take([1, 0]).to_batches(), schema)


@pytest.mark.parametrize("name", ["datacomp_basic", "synthetic", "synthetic_scored", "dedup"])
def test_shipped_configs_build(name, pool):
    cfg = load_config(FilterJobConfig, CONF / f"{name}.yaml")
    job = FilterJob(pool[0], cfg.filters, cfg.name)
    assert [f.kind for f in job.filters] == [spec["kind"] for spec in cfg.filters]


def test_datacomp_basic_config_has_datacomps_values(pool):
    cfg = load_config(FilterJobConfig, CONF / "datacomp_basic.yaml")
    f = {f.kind: f.cfg for f in FilterJob(pool[0], cfg.filters, cfg.name).filters}
    assert (f["caption_length"].min_words, f["caption_length"].min_chars) == (3, 6)
    assert (f["image_size"].min_side, f["image_size"].max_aspect) == (200, 3.0)
    assert (f["language"].keep, f["language"].min_score) == (["en"], 0.0)


@pytest.mark.slow
@pytest.mark.ray
def test_global_filters_give_the_same_verdicts_on_ray(pool, tmp_path):
    root, _ = pool
    other = tmp_path / "ray"
    shutil.copytree(root, other)
    specs = [{"kind": "language"}, {"kind": "exact_dup"}, {"kind": "near_dup"}]
    local, local_funnel = run(root, specs)
    remote, remote_funnel = run(other, specs, engine="ray", workers=2)
    assert remote.equals(local)
    assert remote_funnel.to_dict() == local_funnel.to_dict()


def test_a_shard_where_every_download_failed_goes_through_every_filter(pool):
    root, truth = pool
    failed = pq.read_table(root / "00000.parquet")
    status = pa.repeat("failed_to_download", failed.num_rows)
    pq.write_table(
        failed.set_column(failed.schema.get_field_index("status"), "status", status), root / "00003.parquet"
    )
    attr = pq.read_table(root / "attributes" / SCORE / "00000.parquet").slice(0, 0)
    pq.write_table(attr, root / "attributes" / SCORE / "00003.parquet")
    table, funnel = run(root, ALL)
    assert table.num_rows == len(truth) == funnel.stages[0].total.seen
    assert pq.read_table(root / "attributes" / "filters" / "00003.parquet").num_rows == 0


def test_the_same_kind_twice_with_two_thresholds(pool):
    root, _ = pool
    specs = [
        {"kind": "image_size", "name": "size_dc"},
        {"kind": "image_size", "name": "size_small", "min_side": 32},
    ]
    table, _ = run(root, specs)
    assert table.column_names.count("image_aspect") == 1
    strict, loose = table["size_dc_keep"].to_numpy(), table["size_small_keep"].to_numpy()
    assert (loose | ~strict).all() and strict.sum() < loose.sum()
