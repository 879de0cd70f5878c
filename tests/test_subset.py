import random
from collections import Counter

import numpy as np
import pytest

from curation.core.subset import Subset, SubsetError, concat, difference, intersection, repeat, union
from curation.core.uid import compute_uid


def _hex(n, seed):
    rng = random.Random(seed)
    return [compute_uid(f"http://h/{rng.randint(0, 40)}", "c") for _ in range(n)]


def test_round_trip_readable_as_datacomp_resharder_reads_it(tmp_path):
    uids = _hex(100, 0)
    path = Subset.from_hex(uids, {"name": "t", "how": "test"}).save(tmp_path / "s.npy")
    # DataComp's resharder: np.load(..., mmap_mode="r") and a dtype check against np.dtype("u8,u8")
    raw = np.load(path, mmap_mode="r")
    assert raw.dtype == np.dtype("u8,u8")
    assert np.array_equal(np.sort(raw), raw), "subset must be sorted"
    loaded = Subset.load(path)
    assert Counter(loaded.hex()) == Counter(uids)
    assert loaded.manifest["how"] == "test" and loaded.manifest["count"] == 100


def test_load_rejects_other_dtypes(tmp_path):
    np.save(tmp_path / "bad.npy", np.arange(5))
    with pytest.raises(SubsetError, match="dtype"):
        Subset.load(tmp_path / "bad.npy")


@pytest.mark.parametrize("seed", range(5))
def test_set_operations_match_multiset_semantics(seed):
    a, b = _hex(60, seed), _hex(60, seed + 100)
    ca, cb = Counter(a), Counter(b)
    sa, sb = Subset.from_hex(a), Subset.from_hex(b)
    assert Counter(union(sa, sb).hex()) == ca | cb
    assert Counter(intersection(sa, sb).hex()) == ca & cb
    assert Counter(difference(sa, sb).hex()) == Counter({k: v for k, v in ca.items() if k not in cb})
    assert Counter(concat(sa, sb).hex()) == ca + cb
    assert Counter(repeat(sa, 3).hex()) == Counter({k: 3 * v for k, v in ca.items()})


def test_contains_is_membership():
    a = Subset.from_hex(_hex(30, 1))
    probe = Subset.from_hex(_hex(30, 2)).uids
    expected = {u for u in a.hex()}
    got = a.contains(probe)
    from curation.core.uid import array_to_uids

    assert list(got) == [u in expected for u in array_to_uids(probe)]
