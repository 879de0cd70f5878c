import hashlib
import subprocess
import sys

import numpy as np
import pytest

from curation.core.uid import UID_DTYPE, UidError, array_to_uids, compute_uid, normalize_uid, uids_to_array


def test_uid_is_blake2b_128_of_url_newline_caption():
    expected = hashlib.blake2b(b"http://a/b.jpg\na cat", digest_size=16).hexdigest()
    assert compute_uid("http://a/b.jpg", "a cat") == expected
    assert compute_uid("http://a/b.jpg", "a cat!") != expected


def test_uid_is_the_same_in_another_process():
    """No dependence on PYTHONHASHSEED or process state: the same pair gets the same uid anywhere."""
    code = "from curation.core.uid import compute_uid; print(compute_uid('http://x/é.png', 'ünïcode c'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": "."},
    ).stdout.strip()
    assert other == compute_uid("http://x/é.png", "ünïcode c")


def test_hex_array_round_trip_keeps_order_and_duplicates():
    uids = [compute_uid(f"u{i}", "c") for i in range(50)] + [compute_uid("u3", "c")]
    arr = uids_to_array(uids)
    assert arr.dtype == UID_DTYPE == np.dtype("u8,u8")
    assert array_to_uids(arr) == uids
    # the high half is the first 16 hex chars, as in DataComp
    assert arr[0]["f0"] == int(uids[0][:16], 16) and arr[0]["f1"] == int(uids[0][16:], 16)


@pytest.mark.parametrize("bad", ["abc", "z" * 32, "0" * 33])
def test_bad_uid_is_a_clear_error(bad):
    with pytest.raises(UidError, match="uid"):
        normalize_uid(bad)
