"""SemDeDup: the paper's rule against a brute-force reading of it, the filter on a pool with known copies."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import curation.filtering.semdedup as sd
from curation.core.pool import Pool
from curation.engines import run_job
from curation.filtering.job import FilterJob
from tests.test_filters import N_SHARDS, run, unit, verdicts, write_pool


def brute_force(x: np.ndarray, cluster: np.ndarray, centroid_sim: np.ndarray) -> np.ndarray:
    """The paper's code: per cluster, sort by cosine to the centroid ascending, max of the upper triangle."""
    out = np.full(len(x), -1.0, np.float32)
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        members = members[np.argsort(centroid_sim[members], kind="stable")]
        sims = x[members] @ x[members].T
        triu = np.triu(sims, k=1)
        triu[np.tril_indices(len(members))] = -np.inf
        out[members[1:]] = triu.max(axis=0)[1:]
    return out


def write_file(tmp_path: Path, x: np.ndarray) -> sd.EmbeddingFile:
    w = sd.EmbeddingWriter(tmp_path / "e.f16", x.shape[1])
    for start in range(0, len(x), 70):
        w.append(x[start : start + 70])
    return w.close()


@pytest.mark.parametrize("sim_block", [sd.SIM_BLOCK, 50])
def test_max_sim_matches_the_papers_rule(tmp_path, monkeypatch, sim_block):
    monkeypatch.setattr(sd, "SIM_BLOCK", sim_block)  # 50: a cluster's matrix in many small blocks
    rng = np.random.default_rng(0)
    x = unit(rng, 400, 16)
    x[300:] = x[:100] + rng.normal(scale=0.05, size=(100, 16))  # 100 near pairs
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = write_file(tmp_path, x)
    res = sd.semdedup(emb, sd.SemDedupParams(k=5, niter=10))
    x16 = x.astype(np.float16).astype(np.float32)
    expected = brute_force(x16, res.cluster, res.centroid_sim)
    np.testing.assert_allclose(res.max_sim, expected, atol=1e-5)
    first = res.nearest < 0
    assert first.sum() == len(np.unique(res.cluster))  # only a cluster's first member has no earlier one
    linked = ~first
    np.testing.assert_allclose(
        np.einsum("ij,ij->i", x16[linked], x16[res.nearest[linked]]), res.max_sim[linked], atol=1e-5
    )
    # of each near pair exactly one is a duplicate at eps 0.05, and it is the one nearer the centroid
    dup = sd.duplicate_mask(res.max_sim, 0.05)
    pair_dup = dup[:100] ^ dup[300:]
    assert pair_dup.mean() > 0.95
    same = res.cluster[:100] == res.cluster[300:]
    nearer = np.where(res.centroid_sim[:100] > res.centroid_sim[300:], dup[:100], dup[300:])
    assert nearer[same & pair_dup].all()


def test_filter_drops_all_but_one_of_each_family_and_sweeps_eps(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    truth = write_pool(root)
    spec = {"kind": "semdedup", "k": 4, "eps": [0.05, 0.001, 1.5]}
    table, _ = run(root, [spec])
    by_uid = verdicts(table, "semdedup")
    assert sum(r == "missing_embedding" for _, r in by_uid.values()) == N_SHARDS
    family = {u: t["near_of"] or t["exact_of"] or u for u, t in truth.items()}
    searched = {u for u, (_, r) in by_uid.items() if r != "missing_embedding"}
    kept_per_family: dict[str, int] = {}
    for u in searched:
        kept_per_family[family[u]] = kept_per_family.get(family[u], 0) + by_uid[u][0]
    assert set(kept_per_family.values()) == {1}  # one survivor per family, nothing else dropped
    nearest = dict(zip(table["uid"].to_pylist(), table["semdedup_nearest"].to_pylist(), strict=True))
    for u in searched:
        if not by_uid[u][0]:
            assert family[nearest[u]] == family[u]
    # eps 0.001 keeps the near copies (cosine ~0.99) but not exact copies; 1.5 drops every cluster's tail
    strict = dict(zip(table["uid"].to_pylist(), table["semdedup_keep_eps0.001"].to_pylist(), strict=True))
    exact = {u for u, t in truth.items() if t["exact_of"] and u in searched}
    near = {u for u, t in truth.items() if t["near_of"] and u in searched}
    assert sum(not strict[u] for u in searched) <= len(exact) + len(near)
    assert all(strict[u] for u in searched if family[u] == u and not any(family[v] == u for v in exact))
    loose = table["semdedup_keep_eps1.5"].to_pylist()
    clusters = {c for c in table["semdedup_cluster"].to_pylist() if c is not None}
    assert sum(bool(k) for k in loose) == len(clusters)
    assert "semdedup_keep_eps0.05" not in table.column_names
    prepared = root / "attributes" / "filters" / "_prepared" / "semdedup"
    assert (prepared / "centroids.npy").exists() and not (prepared / "embeddings.f16").exists()


def test_cluster_groups_cover_every_cluster_once():
    bounds = np.concatenate([[0], np.cumsum([50, 1, 1, 1, 200, 3, 0, 40])])
    for n in (1, 3, 8, 20):
        groups = sd.cluster_groups(bounds, n)
        assert groups[0][0] == 0 and groups[-1][1] == 8 and len(groups) <= n
        assert all(a < b for a, b in groups) and all(g[1] == h[0] for g, h in itertools.pairwise(groups))
    assert sd.cluster_groups(np.array([0]), 4) == []


def test_cluster_pass_on_the_engine_gives_the_same_verdicts(tmp_path):
    """workers=1 runs the cluster groups in this process, workers=2 in two spawned ones."""
    root = tmp_path / "pool"
    root.mkdir()
    write_pool(root)
    spec = [{"kind": "semdedup", "k": 4, "cluster_groups": 3}]
    run_job(FilterJob(root, spec, "a"), "local", workers=1)
    run_job(FilterJob(root, spec, "b"), "local", workers=2)
    a, b = Pool(root).read_attributes("a"), Pool(root).read_attributes("b")
    assert a["semdedup_reason"].to_pylist() == b["semdedup_reason"].to_pylist()
    np.testing.assert_allclose(
        np.array(a["semdedup_max_sim"].to_pylist(), float), np.array(b["semdedup_max_sim"].to_pylist(), float)
    )
    prepared = root / "attributes" / "b" / "_prepared" / "semdedup"
    assert not (prepared / "clusters").exists() and not (prepared / "order.npy").exists()


def test_the_engine_pass_equals_the_in_process_pass(tmp_path):
    rng = np.random.default_rng(1)
    x = unit(rng, 300, 8)
    emb = write_file(tmp_path, x)
    params = sd.SemDedupParams(k=6, niter=10)
    here = sd.semdedup(emb, params)
    work = tmp_path / "work"
    work.mkdir()
    there = sd.semdedup(emb, params, schedule=lambda job: run_job(job, "local"), work=work, groups=4)
    np.testing.assert_array_equal(here.max_sim, there.max_sim)
    np.testing.assert_array_equal(here.nearest, there.nearest)
    assert len(list((work / "clusters").glob("g*.npz"))) == 4


def test_the_engine_pass_with_its_work_folder_at_a_url(tmp_path):
    """A remote work folder (a pool on object storage): each cluster range's rows go up as their own
    file and the results come back through storage, the same as the in-process pass."""
    from curation.core import storage

    rng = np.random.default_rng(2)
    emb = write_file(tmp_path, unit(rng, 300, 8))
    params = sd.SemDedupParams(k=6, niter=10)
    here = sd.semdedup(emb, params)
    work = "memory://semdedup-work/w"
    there = sd.semdedup(emb, params, schedule=lambda job: run_job(job, "local"), work=work, groups=4)
    np.testing.assert_array_equal(here.max_sim, there.max_sim)
    np.testing.assert_array_equal(here.nearest, there.nearest)
    names = sorted(p.name for p in storage.list_files(work, "**"))
    assert [n for n in names if n.endswith(".npz")] == [f"g{i:05d}.npz" for i in range(4)]
    assert "order.npy" not in names and len([n for n in names if n.endswith(".f16")]) == 4
    storage.remove("memory://semdedup-work", recursive=True)
