"""curate select: exact top-k, thresholds, random controls, composition, DataComp baselines, funnel.

(Over 400 lines: one file per command; its tests share the pools of tests/selpools.py.)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.core.config import ConfigError, load_config
from curation.core.subset import Subset, concat, difference, intersection, union
from curation.core.uid import UID_DTYPE
from curation.core.uidvec import hex_to_uids, sort_uids, uids_to_hex_array
from curation.engines import run_job
from curation.filtering.job import FilterJob
from curation.selection.run import SelectSpec, run_selection, save_selection
from pipelines.app import app
from tests.selpools import write_datacomp_pool, write_image_pool

CONF = Path(__file__).resolve().parent.parent / "conf" / "select"


@pytest.fixture(scope="module")
def dc_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_datacomp_pool(tmp_path_factory.mktemp("dc") / "pool")


@pytest.fixture(scope="module")
def dc_frame(dc_pool: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(dc_pool.glob("*.parquet"))], ignore_index=True)


@pytest.fixture
def image_pool(tmp_path: Path) -> Path:
    pool = write_image_pool(tmp_path / "pool", n_shards=3, per_shard=60)
    spec = [{"kind": "caption_length", "name": "caption", "min_words": 2, "min_chars": 6}]
    report = run_job(FilterJob(pool, spec, name="filters"), "local")
    assert not report.failed
    return pool


def select(pool: Path, steps: list[dict], **kw) -> Subset:
    return run_selection(pool, SelectSpec(name="t", steps=steps, **kw)).subset


def as_array(uids: list[str] | pd.Series) -> np.ndarray:
    arr, valid = hex_to_uids(pa.array(list(uids), pa.string()))
    assert valid.all()
    return sort_uids(arr)


def ref_topk(df: pd.DataFrame, col: str, k_of: callable, descending: bool = True) -> np.ndarray:
    """Plain reference: drop NaN, order by (score, uid as 128-bit integer), take the first k."""
    d = df[~df[col].isna()].copy()
    d["u"] = d["uid"].map(lambda u: int(u, 16))
    d = d.sort_values([col, "u"], ascending=[not descending, True], kind="mergesort")
    return as_array(d["uid"].iloc[: k_of(len(d))])


def eq(subset: Subset, expected: np.ndarray) -> bool:
    return np.array_equal(subset.uids, expected)


# --- exact top-k -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.999])
def test_topk_fraction_is_exact_with_ties_and_nans(dc_pool, dc_frame, fraction):
    col = "clip_l14_similarity_score"
    got = select(dc_pool, [{"topk": {"score": col, "fraction": fraction}}])
    expected = ref_topk(dc_frame, col, lambda n: int(np.floor(fraction * n + 0.5)))
    assert len(expected) > 0
    assert eq(got, expected)


@pytest.mark.parametrize("count", [1, 7, 333, 5000])
def test_topk_count_and_ascending(dc_pool, dc_frame, count):
    col = "clip_b32_similarity_score"
    got = select(dc_pool, [{"topk": {"score": col, "count": count, "descending": False}}])
    assert eq(got, ref_topk(dc_frame, col, lambda n: min(count, n), descending=False))


def test_topk_cut_lands_inside_a_tie_and_breaks_it_by_uid(dc_pool, dc_frame):
    col = "clip_l14_similarity_score"
    res = run_selection(dc_pool, SelectSpec(steps=[{"topk": {"score": col, "fraction": 0.3}}]))
    cut = res.decisions[0]["cut"]
    assert cut["tied_at_value"] > 1 and cut["boundary_uid"] is not None  # scores are on a 0.01 grid
    ties = dc_frame[dc_frame[col] == np.float32(cut["value"])]
    kept_ties = set(Subset(res.subset.uids).hex()) & set(ties["uid"])
    assert len(kept_ties) == cut["k"] - cut["strictly_better"]
    assert max(kept_ties) == cut["boundary_uid"] < min(set(ties["uid"]) - kept_ties)


def test_missing_scores_are_excluded_and_counted(dc_pool, dc_frame):
    col = "clip_l14_similarity_score"
    res = run_selection(dc_pool, SelectSpec(steps=[{"topk": {"score": col, "fraction": 0.5}}]))
    stage = res.funnel.stages[0]
    assert stage.total.dropped["missing_score"] == int(dc_frame[col].isna().sum()) > 0
    assert stage.total.seen == len(dc_frame)
    res.funnel.check()
    for src, counts in stage.by_source.items():
        assert counts.dropped["missing_score"] == int(dc_frame[(dc_frame.source == src)][col].isna().sum())
    assert not set(res.subset.hex()) & set(dc_frame[dc_frame[col].isna()]["uid"])


def test_selection_is_deterministic_across_threads(dc_pool):
    steps = [{"topk": {"score": "clip_l14_similarity_score", "fraction": 0.3}}, {"random": {"fraction": 0.5}}]
    one = select(dc_pool, steps, duckdb={"threads": 1})
    two = select(dc_pool, steps, duckdb={"threads": 2})
    assert len(one) > 0 and eq(one, two.uids)


def test_threshold_is_absolute_and_inclusive(dc_pool, dc_frame):
    col = "clip_b32_similarity_score"
    got = select(dc_pool, [{"threshold": {"score": col, "min": 0.25, "max": 0.3}}])
    v = dc_frame[col]  # float32, compared in float32 as numpy (and DataComp's `df[key] >= threshold`) does
    expected = as_array(dc_frame[(v >= 0.25) & (v <= 0.3)]["uid"])
    assert len(expected) > 0 and eq(got, expected)


# --- random controls ---------------------------------------------------------------------------------


def ref_random(uids: list[str], k: int, seed: int) -> np.ndarray:
    """Smallest k of (first 8 bytes of MD5('<seed>:<uid>') little-endian, uid)."""
    keys = [(int.from_bytes(hashlib.md5(f"{seed}:{u}".encode()).digest()[:8], "little"), u) for u in uids]
    return as_array([u for _, u in sorted(keys)[:k]])


def test_random_has_exact_size_is_seeded_and_matches_reference(dc_pool, dc_frame):
    a = select(dc_pool, [{"random": {"fraction": 0.2, "seed": 3}}])
    b = select(dc_pool, [{"random": {"fraction": 0.2, "seed": 3}}])
    c = select(dc_pool, [{"random": {"fraction": 0.2, "seed": 4}}])
    k = int(np.floor(0.2 * len(dc_frame) + 0.5))
    assert len(a) == len(c) == k
    assert eq(a, b.uids) and not eq(a, c.uids)
    assert eq(a, ref_random(list(dc_frame["uid"]), k, 3))


def test_random_control_matches_another_subsets_size(dc_pool, tmp_path):
    top = run_selection(
        dc_pool, SelectSpec(steps=[{"topk": {"score": "clip_l14_similarity_score", "count": 123}}])
    )
    path = save_selection(top, tmp_path / "top.npy")
    ctrl = select(dc_pool, [{"random": {"size_of": str(path), "seed": 0}}])
    assert len(ctrl) == 123 and not eq(ctrl, top.subset.uids)


def test_smaller_random_draw_is_a_prefix_of_a_larger_one(dc_pool):
    small = set(select(dc_pool, [{"random": {"count": 50, "seed": 1}}]).hex())
    large = set(select(dc_pool, [{"random": {"count": 400, "seed": 1}}]).hex())
    assert len(small) == 50 and small < large


# --- DataComp baselines -------------------------------------------------------------------------------


def datacomp_basic_reference(df: pd.DataFrame) -> np.ndarray:
    """DataComp's baselines/apply_filter.py basic filter, with the precomputed `lang` for fastText."""
    caption_num_words = df.text.apply(lambda x: len(x.split()))
    caption_num_chars = df.text.apply(lambda x: len(x))
    english_mask = df.lang == "en"
    caption_mask = (caption_num_words > 2) & (caption_num_chars > 5)
    min_image_dim = np.minimum(df.original_width, df.original_height)
    max_image_dim = np.maximum(df.original_width, df.original_height)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect_ratio = max_image_dim / min_image_dim
    image_mask = (min_image_dim >= 200) & (aspect_ratio <= 3.0)
    return datacomp_uids(df[english_mask & caption_mask & image_mask].uid)


def datacomp_clip_reference(df: pd.DataFrame, key: str, fraction: float) -> np.ndarray:
    """DataComp's get_threshold + load_uids_with_clip_score_helper."""
    n = int(len(df) * fraction)
    threshold = -np.sort(-df[key].values)[n]
    return datacomp_uids(df[df[key] >= threshold].uid)


def datacomp_uids(uids: pd.Series) -> np.ndarray:
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids.values], np.dtype("u8,u8"))
    arr.sort()
    return arr


def test_datacomp_basic_matches_datacomps_definition(dc_pool, dc_frame):
    spec = load_config(SelectSpec, CONF / "datacomp_basic.yaml")
    got = run_selection(dc_pool, spec)
    expected = datacomp_basic_reference(dc_frame)
    assert 0 < len(expected) < len(dc_frame)
    assert eq(got.subset, expected)
    reasons = got.funnel.stages[0].total.dropped
    assert {"not_english", "too_few_words", "too_small", "extreme_aspect"} <= set(reasons)


@pytest.mark.parametrize("key", ["clip_l14_similarity_score", "clip_b32_similarity_score"])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_datacomp_clip_score_matches_datacomps_definition(dc_pool, dc_frame, key, fraction):
    spec = load_config(
        SelectSpec,
        CONF / "datacomp_clip_l14_30.yaml",
        [f"steps.0.topk.score={key}", f"steps.0.topk.fraction={fraction}"],
    )
    expected = datacomp_clip_reference(dc_frame, key, fraction)
    result = run_selection(dc_pool, spec)
    assert eq(result.subset, expected)
    # the decision records what was written, not DataComp's threshold rank
    assert result.decisions[-1]["kept"] == len(expected) == result.subset.manifest["selected_rows"]


def test_datacomp_basic_plus_clip_score_is_the_intersection(dc_pool, dc_frame):
    spec = load_config(SelectSpec, CONF / "datacomp_basic_clip_l14_30.yaml")
    basic = datacomp_basic_reference(dc_frame)
    clip = datacomp_clip_reference(dc_frame, "clip_l14_similarity_score", 0.3)
    expected = np.intersect1d(basic, clip)
    assert len(expected) > 0 and eq(run_selection(dc_pool, spec).subset, expected)


def test_datacomp_basic_reads_language_from_an_attribute_table(dc_pool, dc_frame, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for p in sorted(dc_pool.glob("*.parquet")):
        t = pq.read_table(p)
        pq.write_table(t.drop(["lang"]), pool / p.name)
        attr = t.select(["uid", "lang"]).rename_columns(["uid", "language"])
        (pool / "attributes" / "filters").mkdir(parents=True, exist_ok=True)
        pq.write_table(attr, pool / "attributes" / "filters" / p.name)
    got = select(pool, [{"datacomp_basic": {"lang": "filters:language"}}])
    assert eq(got, datacomp_basic_reference(dc_frame))


def test_datacomp_basic_without_a_language_column_is_a_clear_error(tmp_path, dc_pool):
    pool = tmp_path / "pool"
    pool.mkdir()
    for p in sorted(dc_pool.glob("*.parquet")):
        pq.write_table(pq.read_table(p).drop(["lang"]), pool / p.name)
    with pytest.raises(ValueError, match="no column 'lang'"):
        select(pool, [{"datacomp_basic": {}}])


# --- composition over an img2dataset pool with attribute tables ------------------------------------------


def image_frame(pool: Path) -> pd.DataFrame:
    rows = pd.concat([pd.read_parquet(p) for p in sorted(pool.glob("0*.parquet"))])
    rows = rows[rows.status == "success"]
    clip = pd.concat([pd.read_parquet(p) for p in sorted((pool / "attributes" / "clip").glob("*.parquet"))])
    verdicts = pd.concat(
        [pd.read_parquet(p) for p in sorted((pool / "attributes" / "filters").glob("*.parquet"))]
    )
    return rows.merge(clip, on="uid", how="left").merge(
        verdicts[["uid", "caption_keep"]], on="uid", how="left"
    )


def test_filter_then_topk_of_what_remains(image_pool):
    df = image_frame(image_pool)
    res = run_selection(
        image_pool,
        SelectSpec(
            steps=[{"filter": {"stage": "filters"}}, {"topk": {"score": "clip:clip_score", "fraction": 0.3}}]
        ),
    )
    kept = df[df.caption_keep]
    expected = ref_topk(kept, "clip_score", lambda n: int(np.floor(0.3 * n + 0.5)))
    assert 0 < len(expected) < len(kept) and eq(res.subset, expected)
    f, t = res.funnel.stages
    assert f.total.seen == len(df) and f.total.dropped["filtered_caption"] == int((~df.caption_keep).sum())
    assert t.total.seen == f.total.kept and t.total.kept == len(expected)
    res.funnel.check()


def test_samples_without_an_attribute_row_count_as_missing(image_pool):
    path = image_pool / "attributes" / "clip" / "00001.parquet"
    t = pq.read_table(path)
    pq.write_table(t.slice(0, t.num_rows - 5), path)
    (image_pool / "attributes" / "clip" / "00002.parquet").unlink()
    df = image_frame(image_pool)
    res = run_selection(
        image_pool, SelectSpec(steps=[{"topk": {"score": "clip:clip_score", "fraction": 0.5}}])
    )
    assert res.funnel.stages[0].total.dropped["missing_score"] == int(df.clip_score.isna().sum()) > 5
    assert eq(res.subset, ref_topk(df, "clip_score", lambda n: int(np.floor(0.5 * n + 0.5))))


def test_set_operations_match_subset_multiset_semantics(image_pool, tmp_path):
    a_spec = {"topk": {"score": "clip:clip_score", "fraction": 0.5}}
    b_spec = {"random": {"fraction": 0.5, "seed": 7}}
    a, b = select(image_pool, [a_spec]), select(image_pool, [b_spec])
    ops = {"union": union, "intersection": intersection, "difference": difference, "concat": concat}
    for kind, op in ops.items():
        got = select(image_pool, [{kind: [a_spec, b_spec]}])
        assert Counter(got.hex()) == Counter(op(a, b).hex()), kind
    rep = select(image_pool, [{"repeat": {"times": 3, "of": a_spec}}])
    assert Counter(rep.hex()) == Counter({u: 3 for u in a.hex()})


def test_external_subset_step_and_nested_within(image_pool, tmp_path):
    df = image_frame(image_pool)
    clusters = Subset.from_hex(list(df.uid.iloc[::3])).save(tmp_path / "clusters.npy")
    steps = [
        {
            "intersection": [
                {"topk": {"score": "clip:clip_score", "fraction": 0.3, "within": {"filter": {}}}},
                {"subset": {"path": str(clusters)}},
            ]
        }
    ]
    got = select(image_pool, steps)
    top = ref_topk(df[df.caption_keep], "clip_score", lambda n: int(np.floor(0.3 * n + 0.5)))
    expected = np.intersect1d(top, as_array(df.uid.iloc[::3]))
    assert len(expected) > 0 and eq(got, expected)


def test_pool_without_uid_column_derives_uids_like_the_pool_reader(image_pool):
    expected = as_array(image_frame(image_pool).uid)  # the fixture's uids are compute_uid(url, caption)
    for p in sorted(image_pool.glob("0*.parquet")):
        pq.write_table(pq.read_table(p).drop(["uid"]), p)
    assert eq(select(image_pool, [{"all": {}}]), expected)
    assert eq(select(image_pool, [{"topk": {"score": "clip:clip_score", "fraction": 1.0}}]), expected)


def test_invalid_uids_are_dropped_with_a_reason(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    uids = uids_to_hex_array(np.array([(1, 2), (3, 4), (5, 6)], dtype=UID_DTYPE)).to_pylist()
    pq.write_table(
        pa.table({"uid": [*uids, "not-a-uid"], "text": ["a"] * 4, "s": [0.1, 0.2, 0.3, 0.9]}),
        pool / "00000.parquet",
    )
    res = run_selection(pool, SelectSpec(steps=[{"topk": {"score": "s", "count": 2}}]))
    assert res.subset.hex() == [uids[2]]
    last = res.funnel.stages[-1]
    assert last.stage == "select:valid_uid" and last.total.dropped["invalid_uid"] == 1
    res.funnel.check()


# --- spec, output and CLI ---------------------------------------------------------------------------


def test_unknown_step_kind_and_bad_settings_are_config_errors(dc_pool):
    with pytest.raises(ConfigError, match="unknown step kind 'topn'"):
        select(dc_pool, [{"topn": {"score": "x", "fraction": 0.1}}])
    with pytest.raises(ConfigError, match="exactly one of fraction, count"):
        select(dc_pool, [{"topk": {"score": "x", "fraction": 0.1, "count": 3}}])
    with pytest.raises(ConfigError, match="fractoin"):
        select(dc_pool, [{"topk": {"score": "x", "fractoin": 0.1}}])


def test_cli_writes_subset_manifest_and_funnel(dc_pool, tmp_path):
    out = tmp_path / "sel" / "top.npy"
    result = CliRunner().invoke(
        app,
        ["select", str(dc_pool), "-c", str(CONF / "datacomp_clip_l14_30.yaml"), "--out", str(out),
         "--step", "random: {fraction: 0.5, seed: 2}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = Subset.load(out)
    m = loaded.manifest
    assert m["name"] == "datacomp_clip_l14_30" and m["count"] == len(loaded) > 0
    assert m["decisions"][0]["kth_value"] is not None and m["seeds"] == [2]
    assert sum(v["rows"] for v in m["source_mix"].values()) == len(loaded)
    stats = (out.with_suffix(".stats.json")).read_text()
    assert "below_topk" in stats and "not_sampled" in stats
    assert not (out.parent / ".top.select-work").exists()


# --- vectorised uid helpers ------------------------------------------------------------------------------


def test_uid_vector_helpers_round_trip_validate_sort_and_look_up():
    rng = np.random.default_rng(5)
    u = np.empty(1000, dtype=UID_DTYPE)
    u["f0"] = rng.integers(0, 4, 1000, dtype=np.uint64)  # many equal high halves
    u["f1"] = rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64, endpoint=True)
    hexes = uids_to_hex_array(u)
    assert sorted(hexes.to_pylist()) == Subset(u.copy()).hex()  # same text as curation.core.uid, one by one
    back, ok = hex_to_uids(hexes)
    assert ok.all() and np.array_equal(back, u)
    assert np.array_equal(sort_uids(u), np.sort(u))
    in_place = u.copy()
    assert sort_uids(in_place, inplace=True) is in_place and np.array_equal(in_place, np.sort(u))
    odd = pa.array(["g" * 32, None, "abc", hexes[0].as_py().upper(), hexes[1].as_py()])
    vals, ok = hex_to_uids(odd)
    assert ok.tolist() == [False, False, False, True, True] and vals[3] == u[0] and vals[4] == u[1]
    from curation.core.uidvec import lookup

    table = np.unique(u)
    probe = np.concatenate([u[:50], np.array([(9, 9), (2**63, 1)], dtype=UID_DTYPE)])
    pos = lookup(table, probe)
    assert (pos[-2:] == -1).all() and np.array_equal(table[pos[:50]], u[:50])


def test_deep_chain_equals_its_parts_combined(dc_pool, dc_frame, tmp_path):
    thr = {"threshold": {"score": "clip_b32_similarity_score", "min": 0.2}}
    top = {"topk": {"score": "clip_l14_similarity_score", "fraction": 0.3}}
    rnd = {"random": {"fraction": 0.1, "seed": 1}}
    exclude = Subset.from_hex(list(dc_frame.uid.iloc[::5])).save(tmp_path / "exclude.npy")
    got = select(
        dc_pool,
        [thr, {"union": [top, rnd]}, {"difference": [{"all": {}}, {"subset": {"path": str(exclude)}}]},
         {"repeat": {"times": 2, "of": {"all": {}}}}],
    )  # fmt: skip
    parts = union(select(dc_pool, [thr, top]), select(dc_pool, [thr, rnd]))
    expected = Counter({u: 2 for u in difference(parts, Subset.load(exclude)).hex()})
    assert len(expected) > 0 and Counter(got.hex()) == expected
