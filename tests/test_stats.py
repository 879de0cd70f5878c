import numpy as np
import pytest

from curation.core.stats import Funnel, FunnelError, StageStats, merge


def test_from_verdicts_counts_per_source_and_balances():
    keep = np.array([True, False, False, True, False])
    reasons = [None, "short", "lang", None, "short"]
    s = StageStats.from_verdicts("f", keep, reasons, ["a", "a", "b", "b", "b"])
    s.check_balanced()
    assert s.total.seen == 5 and s.total.kept == 2 and dict(s.total.dropped) == {"short": 2, "lang": 1}
    assert s.by_source["b"].to_dict() == {"seen": 3, "kept": 1, "dropped": {"lang": 1, "short": 1}}


def test_dropped_row_without_reason_is_an_error():
    with pytest.raises(FunnelError, match="no drop reason"):
        StageStats.from_verdicts("f", np.array([False]), [None])


def test_merge_adds_and_round_trips_through_dict():
    a = StageStats.from_verdicts("f", np.array([True, False]), [None, "x"], ["s", "s"])
    b = StageStats.from_verdicts("f", np.array([False, False]), ["x", "y"], ["s", "t"])
    (m,) = merge([StageStats.from_dict(a.to_dict()), b])
    assert m.total.to_dict() == {"seen": 4, "kept": 1, "dropped": {"x": 2, "y": 1}}
    m.check_balanced()


def test_unbalanced_funnel_is_caught():
    a = StageStats.from_verdicts("a", np.array([True, True, False]), [None, None, "x"])
    b = StageStats.from_verdicts("b", np.array([True]), [None])  # saw 1, but a kept 2
    with pytest.raises(FunnelError, match="saw 1"):
        Funnel([a, b]).check()
    broken = StageStats.from_dict({"stage": "c", "seen": 3, "kept": 1, "dropped": {"x": 1}})
    with pytest.raises(FunnelError, match="does not balance"):
        broken.check_balanced()
