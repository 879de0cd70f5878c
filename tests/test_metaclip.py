"""MetaCLIP balancing: word-boundary matching, head entries capped at t, tail entries kept whole, and the
same output for a seed whatever the worker count; on a long-tailed synthetic crawl."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation.core.pool import Pool
from curation.core.uidvec import uids_to_hex_array
from curation.selection.metaclip import EntryMatcher, entry_counts, load_entries
from curation.selection.run import SelectSpec, run_selection
from tests.synth_pool import small_crawl, write_synth_pool


def test_entries_match_whole_words_case_folded_and_nested(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("# comment\ncat\nSnow Leopard\nleopard\ncat\n\nhot-dog\n")
    entries = load_entries(path)
    assert entries == ["cat", "snow leopard", "leopard", "hot dog"]
    m = EntryMatcher(entries)
    assert m.match("A CAT, a catfish and a snow-leopard.") == [0, 1, 2]
    assert m.match("concatenate scatter") == []
    assert m.match("my hot dog!") == [3]
    assert m.match(None) == []
    (tmp_path / "m.json").write_text('["fish", "Fish ", "cup"]')
    assert load_entries(tmp_path / "m.json") == ["fish", "cup"]


@pytest.fixture(scope="module")
def skewed_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metaclip")
    synth = small_crawl(root / "synth", 2000, "class_skew=1.2")
    return write_synth_pool(synth, root / "pool", shard_size=500)


def select(pool: Path, t: int, seed: int = 0, workers: int = 1, rule: str = "any"):
    spec = SelectSpec(name="mc", steps=[{"metaclip_balance": {"t": t, "seed": seed, "rule": rule}}])
    return run_selection(pool, spec, workers=workers)


@pytest.mark.slow
def test_head_capped_at_t_tail_untouched_same_output_for_a_seed(skewed_pool):
    t = 60
    result = select(skewed_pool, t)
    result.funnel.check()
    decision = result.decisions[0]
    stage = decision["match_stage"]
    pool = Pool(skewed_pool)
    before = entry_counts(pool, stage, downloaded_uids(pool))
    after = entry_counts(pool, stage, uids_to_hex_array(result.subset.uids))
    head = {e for e, n in before.items() if n > t}
    tail = set(before) - head
    assert len(head) >= 5 and len(tail) >= 5, before
    assert all(after.get(e, 0) == before[e] for e in tail)  # every pair of a tail entry is kept
    for e in head:  # about t each, plus pairs kept for another (tail) entry they also match
        assert 0.6 * t <= after[e] <= 1.6 * t, (e, before[e], after[e])
    assert decision["head_entries"] == len(head)
    again = select(skewed_pool, t, workers=2)
    assert (again.subset.uids == result.subset.uids).all()
    other = select(skewed_pool, t, seed=1)
    assert (
        len(other.subset.uids) != len(result.subset.uids) or (other.subset.uids != result.subset.uids).any()
    )
    summed = select(skewed_pool, t, rule="sum")
    assert abs(len(summed.subset.uids) - len(result.subset.uids)) < 0.2 * len(result.subset.uids)


def downloaded_uids(pool: Pool) -> pa.Array:
    uids = pa.concat_arrays([pool.read_samples(s)["uid"].combine_chunks() for s in pool.shard_ids()])
    return pc.utf8_lower(uids)
