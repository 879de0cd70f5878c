"""Source mixing: proportions, determinism, shortfalls, upsampling, the written files and the CLI."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.builders.mixing import (
    Candidates,
    MixConfig,
    MixError,
    MixInput,
    gather_candidates,
    largest_remainder,
    mix,
    read_sources,
    run_mix,
    write_mix,
)
from curation.core.config import ConfigError
from curation.core.subset import Subset
from curation.core.uid import array_to_hex_column, compute_uid, hex_column_to_array, uids_to_array
from pipelines.app import app

POOL_SOURCES = {"photo": 0.55, "forum": 0.3, "news": 0.15}


def write_source_pool(root: Path, per_shard: int = 4000, shards: int = 3, seed: int = 0) -> dict[str, str]:
    """A pool with a source column and some failed downloads; returns uid -> source of its samples."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    truth = {}
    names = list(POOL_SOURCES)
    for s in range(shards):
        src = rng.choice(names, size=per_shard, p=list(POOL_SOURCES.values()))
        ok = rng.random(per_shard) > 0.05
        urls = [f"http://127.0.0.1/{s}/{i}.jpg" for i in range(per_shard)]
        caps = [f"caption {s} {i}" for i in range(per_shard)]
        uids = [compute_uid(u, c) for u, c in zip(urls, caps, strict=True)]
        status = np.where(ok, "success", "failed_to_download")
        table = pa.table({"url": urls, "caption": caps, "uid": uids, "source": src, "status": status})
        pq.write_table(table, root / f"{s:05d}.parquet")
        truth.update({u: str(x) for u, x, k in zip(uids, src, ok, strict=True) if k})
    return truth


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("mix")
    truth = write_source_pool(base / "pool")
    extra = [compute_uid(f"http://127.0.0.1/laion/{i}", "x") for i in range(3000)]
    Subset.from_hex(extra, {"name": "laion"}).save(base / "laion.npy")
    truth.update({u: "laion" for u in extra})
    return {"pool": base / "pool", "laion": base / "laion.npy", "truth": truth}


def _inputs(src) -> list[dict[str, object]]:
    return [{"path": src["pool"]}, {"path": src["laion"], "source": "laion"}]


def _cfg(src, **kw) -> MixConfig:
    return MixConfig(inputs=_inputs(src), **kw)


def _proportions_from_truth(subset: Subset, truth: dict[str, str]) -> dict[str, float]:
    c = Counter(truth[u] for u in subset.hex())
    return {s: n / len(subset) for s, n in c.items()}


WEIGHTS = {"photo": 0.4, "forum": 0.3, "news": 0.2, "laion": 0.1}


@pytest.mark.parametrize("total", [997, 5000])
def test_weighted_mix_hits_the_asked_proportions_within_one_percent(sources, tmp_path, total):
    path, _ = run_mix(_cfg(sources, weights=WEIGHTS, total=total, seed=3), tmp_path / "m.npy")
    loaded = Subset.load(path)
    assert len(loaded) == total
    assert loaded.unique_count() == total  # without replacement: no uid twice
    got = _proportions_from_truth(loaded, sources["truth"])  # checked against the fixture's truth
    for s, w in WEIGHTS.items():
        assert abs(got[s] - w) < 0.01, (s, got[s], w)
        assert loaded.manifest["sources"][s]["requested_proportion"] == pytest.approx(w)
        assert loaded.manifest["sources"][s]["actual_proportion"] == pytest.approx(got[s], abs=1e-6)
    assert loaded.manifest["max_proportion_error"] <= 1 / total
    assert loaded.manifest["total_shortfall"] == 0


def test_same_seed_same_mix_whatever_the_input_order(sources):
    a = mix(
        _cfg(sources, weights=WEIGHTS, total=4000, seed=7),
        gather_candidates(_cfg(sources, weights=WEIGHTS).inputs),
    )
    reversed_inputs = MixConfig(inputs=_inputs(sources)[::-1], weights=WEIGHTS, total=4000, seed=7)
    b = mix(reversed_inputs, gather_candidates(reversed_inputs.inputs))
    assert np.array_equal(a.subset.uids, b.subset.uids)
    c = mix(_cfg(sources, weights=WEIGHTS, total=4000, seed=8), gather_candidates(reversed_inputs.inputs))
    assert not np.array_equal(a.subset.uids, c.subset.uids)


def test_adding_a_source_does_not_change_what_the_others_give(sources):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    three = mix(MixConfig(counts={"photo": 900, "forum": 500, "news": 300, "laion": 0}, seed=1), cands)
    four = mix(MixConfig(counts={"photo": 900, "forum": 500, "news": 300, "laion": 800}, seed=1), cands)
    truth = sources["truth"]
    for s in ("photo", "forum", "news"):
        pick3 = {u for u in three.subset.hex() if truth[u] == s}
        pick4 = {u for u in four.subset.hex() if truth[u] == s}
        assert pick3 == pick4 and len(pick3) == {"photo": 900, "forum": 500, "news": 300}[s]


def test_largest_remainder_is_exact_and_within_one():
    assert largest_remainder(np.array([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = rng.random(rng.integers(1, 8)) + 1e-3
        total = int(rng.integers(0, 100_000))
        counts = largest_remainder(w, total)
        assert counts.sum() == total
        assert np.all(np.abs(counts - w / w.sum() * total) < 1)


def test_shortfall_is_capped_and_reported(sources):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    avail = cands.available()
    cfg = MixConfig(
        weights={"news": 0.5, "photo": 0.5, "forum": 0, "laion": 0}, total=2 * avail["news"] + 1000
    )
    res = mix(cfg, cands)
    m = res.subset.manifest
    assert m["sources"]["news"]["selected"] == avail["news"]
    assert m["sources"]["news"]["shortfall"] == 500
    assert m["total_shortfall"] == 500 and len(res.subset) == cfg.total - 500
    assert any("shortfall" in n for n in m["notes"])


def test_shortfall_error_and_shrink(sources):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    news = cands.available()["news"]
    weights = {"news": 0.5, "photo": 0.5, "forum": 0.0, "laion": 0.0}
    with pytest.raises(MixError, match="news: asked"):
        mix(MixConfig(weights=weights, total=4 * news, shortfall="error"), cands)
    shrunk = mix(MixConfig(weights=weights, total=4 * news, shortfall="shrink"), cands)
    sel = {s: v["selected"] for s, v in shrunk.subset.manifest["sources"].items()}
    assert sel["news"] <= news and abs(sel["news"] - sel["photo"]) <= 1  # proportions kept
    assert len(shrunk.subset) >= 2 * news - 1


def test_no_total_takes_the_largest_mix_that_keeps_the_proportions(sources):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    res = mix(MixConfig(weights=WEIGHTS), cands)
    m = res.subset.manifest
    assert m["total_shortfall"] == 0
    binding = min(cands.available()[s] / w for s, w in WEIGHTS.items())
    assert int(binding) - len(WEIGHTS) <= len(res.subset) <= binding


@pytest.mark.parametrize("sampling", ["with_replacement", "repeat"])
def test_replacement_upsamples_with_repeated_uids(sources, tmp_path, sampling):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    laion = cands.available()["laion"]
    cfg = MixConfig(counts={"laion": 2 * laion + 10, "photo": 100, "forum": 0, "news": 0}, sampling=sampling)
    res = mix(cfg, cands)
    counts = Counter(res.subset.hex())
    laion_counts = [c for u, c in counts.items() if sources["truth"][u] == "laion"]
    assert sum(laion_counts) == 2 * laion + 10
    assert max(laion_counts) >= 2  # upsampled
    if sampling == "repeat":  # whole copies first: every laion uid appears 2 or 3 times
        assert len(laion_counts) == laion and set(laion_counts) <= {2, 3}
    stats = res.stats
    stats.check_balanced()
    assert stats.extra["written"] == len(res.subset)
    assert stats.extra["upsampled_copies"] == len(res.subset) - stats.total.kept
    path = tmp_path / "up.npy"
    write_mix(res, path)
    side = read_sources(path)
    assert sum(side["copies"].to_pylist()) == len(res.subset)
    assert all(
        sources["truth"][u] == s
        for u, s in zip(side["uid"].to_pylist(), side["source"].to_pylist(), strict=True)
    )


def test_sources_sidecar_keeps_every_sample_source(sources, tmp_path):
    path, res = run_mix(_cfg(sources, weights=WEIGHTS, total=3000), tmp_path / "m.npy")
    side = read_sources(path)
    assert side.num_rows == len(res.subset)
    assert sorted(side["uid"].to_pylist()) == sorted(Subset.load(path).hex())
    truth = sources["truth"]
    assert all(
        truth[u] == s for u, s in zip(side["uid"].to_pylist(), side["source"].to_pylist(), strict=True)
    )


def test_pool_sources_filter_and_overriding_name(sources):
    inputs = [
        {"path": sources["pool"], "sources": ["news"]},
        {"path": sources["pool"], "source": "everything"},
    ]
    cands = gather_candidates(MixConfig(inputs=inputs, counts={"news": 1}).inputs)
    truth = sources["truth"]
    pool_rows = sum(1 for s in truth.values() if s != "laion")
    assert cands.available() == {
        "news": sum(1 for s in truth.values() if s == "news"),
        "everything": pool_rows,
    }


def test_bad_specs_are_clear_errors(sources):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    with pytest.raises(MixError, match="no weight/count"):
        mix(MixConfig(weights={"photo": 1.0}), cands)
    with pytest.raises(MixError, match="give it source"):
        gather_candidates([MixInput(path=sources["laion"])])
    with pytest.raises(ValueError, match="exactly one of"):
        MixConfig(weights={"a": 1.0}, counts={"a": 1})
    with pytest.raises(ValueError, match="needs a total"):
        MixConfig(weights={"a": 1.0}, sampling="with_replacement")
    with pytest.raises(ValueError, match="weights must be"):
        MixConfig(weights={"a": -1.0, "b": 2.0})


def test_empty_candidates_give_an_empty_mix():
    res = mix(MixConfig(counts={"a": 0}), Candidates())
    assert len(res.subset) == 0 and res.subset.manifest["total_selected"] == 0


def test_uid_columns_convert_like_the_reference_functions():
    hexes = [compute_uid(f"u{i}", "c") for i in range(500)]
    hexes[7] = hexes[7].upper()
    col = pa.chunked_array([pa.array(hexes[:200]), pa.array(hexes[200:])])
    arr = hex_column_to_array(col)
    assert np.array_equal(arr, uids_to_array(hexes))
    assert array_to_hex_column(arr).to_pylist() == [h.lower() for h in hexes]
    with pytest.raises(ValueError, match="hex"):
        hex_column_to_array(pa.array(["z" * 32]))


def test_cli_mixes_and_reports(sources, tmp_path):
    out = tmp_path / "cli.npy"
    args = [
        "mix",
        str(sources["pool"]),
        f"laion={sources['laion']}",
        "-o",
        str(out),
        "-t",
        "2000",
        "--seed",
        "5",
    ]
    for s, w in WEIGHTS.items():
        args += ["-w", f"{s}={w}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    m = Subset.load(out).manifest
    assert m["total_selected"] == 2000 and m["seed"] == 5
    assert "laion" in result.output and "20.00" in result.output  # the per-source table
    too_many = [a if a != "2000" else "100000" for a in args]
    strict = CliRunner().invoke(app, [*too_many, "--strict"])
    assert strict.exit_code == 1 and "not enough samples" in strict.output
    capped = CliRunner().invoke(app, too_many)
    assert capped.exit_code == 0 and "shortfall" in capped.output


def test_cli_rejects_a_malformed_weight(sources, tmp_path):
    result = CliRunner().invoke(
        app, ["mix", str(sources["pool"]), "-w", "photo", "-o", str(tmp_path / "x.npy")]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError | SystemExit)


def test_a_uid_listed_twice_in_a_source_is_one_candidate(sources):
    inputs = [{"path": sources["laion"], "source": "laion"}, {"path": sources["laion"], "source": "laion"}]
    inputs.append({"path": sources["laion"], "source": "again"})
    cfg = MixConfig(inputs=inputs, counts={"laion": 3000, "again": 10}, overlap="allow")
    res = mix(cfg, gather_candidates(cfg.inputs))
    m = res.subset.manifest
    assert (
        m["sources"]["laion"]["available"] == 3000 and m["sources"]["laion"]["duplicate_candidates"] == 3000
    )
    counts = Counter(res.subset.hex())
    assert max(counts.values()) == 2 and sum(c == 2 for c in counts.values()) == 10  # the 10 also in "again"
    assert m["uids_in_several_sources"] == 10 and res.stats.extra["cross_source_copies"] == 10


# ------------------------------------------------------------- typos and overlapping inputs (issue 21)


def test_a_weight_for_a_source_not_in_the_inputs_is_an_error_naming_it(sources, tmp_path):
    cands = gather_candidates(_cfg(sources, weights=WEIGHTS).inputs)
    with pytest.raises(MixError, match=r"\['fourm'\]"):
        mix(MixConfig(weights={**WEIGHTS, "fourm": 0.1}, total=1000), cands)
    args = [
        "mix",
        str(sources["pool"]),
        f"laion={sources['laion']}",
        "-o",
        str(tmp_path / "t.npy"),
        "-t",
        "500",
    ]
    for s, w in {**WEIGHTS, "fourm": 0.1}.items():
        args += ["-w", f"{s}={w}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "fourm" in result.output
    assert not (tmp_path / "t.npy").exists()


def _pool_and_a_subset_of_it(sources, tmp_path) -> list[dict[str, object]]:
    """The conf/mix/example.yaml pattern: a pool and a subset drawn from that same pool."""
    photo = [u for u, s in sources["truth"].items() if s == "photo"]
    forum = [u for u, s in sources["truth"].items() if s == "forum"]
    Subset.from_hex(sorted(photo[:1500] + forum[:1500]), {"name": "hm"}).save(tmp_path / "hm.npy")
    return [{"path": sources["pool"]}, {"path": tmp_path / "hm.npy", "source": "hardmatch"}]


def test_overlapping_inputs_write_no_uid_twice_and_say_so(sources, tmp_path):
    inputs = _pool_and_a_subset_of_it(sources, tmp_path)
    weights = {"photo": 0.4, "forum": 0.2, "news": 0.1, "hardmatch": 0.3}
    cfg = MixConfig(inputs=inputs, weights=weights, total=5000)
    res = mix(cfg, gather_candidates(cfg.inputs))
    counts = Counter(res.subset.hex())
    assert len(res.subset) == 5000 and max(counts.values()) == 1  # no uid twice
    stats = res.stats
    stats.check_balanced()
    assert stats.extra["upsampled_copies"] == 0 and stats.extra["cross_source_copies"] == 0
    taken = stats.total.dropped["in_other_source"]
    assert taken > 0  # hardmatch (first by name) took uids photo and forum then could not draw
    m = res.subset.manifest
    assert m["overlap"] == "exclude" and m["candidates_in_several_sources"] == 3000
    assert sum(r["taken_by_other_sources"] for r in m["sources"].values()) == taken
    assert m["uids_written_more_than_once"] == 0 and m["uids_in_several_sources"] == 0
    assert {s: r["selected"] for s, r in m["sources"].items()} == {
        "forum": 1000, "hardmatch": 1500, "news": 500, "photo": 2000,
    }  # fmt: skip


def test_overlap_allow_writes_repeats_and_counts_them(sources, tmp_path):
    inputs = _pool_and_a_subset_of_it(sources, tmp_path)
    weights = {"photo": 0.4, "forum": 0.2, "news": 0.1, "hardmatch": 0.3}
    cfg = MixConfig(inputs=inputs, weights=weights, total=5000, overlap="allow")
    res = mix(cfg, gather_candidates(cfg.inputs))
    repeats = len(res.subset) - len(set(res.subset.hex()))
    assert repeats > 0
    assert res.stats.extra["upsampled_copies"] == repeats == res.stats.extra["cross_source_copies"]
    assert res.subset.manifest["uids_written_more_than_once"] == repeats
