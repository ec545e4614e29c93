"""The rolling window's running totals equal a brute-force count, and its costs are flat."""

from __future__ import annotations

import time
from math import floor

from hypothesis import given, settings
from hypothesis import strategies as st

from resilience._outcomes import KINDS
from resilience._rolling import RollingWindow

events = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=50.0), st.integers(0, KINDS - 1)),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    length=st.floats(min_value=0.01, max_value=20.0),
    buckets=st.integers(1, 50),
    steps=events,
    read_at=st.floats(min_value=0.0, max_value=80.0),
)
def test_totals_equal_a_brute_force_count(
    length: float, buckets: int, steps: list[tuple[float, int]], read_at: float
) -> None:
    w = RollingWindow(length, buckets)
    inv = buckets / length
    now = 0.0
    seen: list[tuple[int, int]] = []  # (bucket index, kind)
    for dt, kind in steps:
        now += dt
        w.add(now, kind)
        seen.append((floor(now * inv), kind))
        newest = max(i for i, _ in seen)
        expected = [0] * KINDS
        for i, k in seen:
            if i > newest - buckets:
                expected[k] += 1
        assert w.totals == expected
    at = now + read_at
    idx = max([floor(at * inv)] + [i for i, _ in seen])
    expected = [0] * KINDS
    for i, k in seen:
        if i > idx - buckets:
            expected[k] += 1
    assert w.roll(at) == expected


def _cost(buckets: int, gap: float) -> float:
    w = RollingWindow(10.0, buckets)
    now = 0.0
    start = time.perf_counter()
    for _ in range(5000):
        now += gap
        w.add(now, 0)
        w.roll(now)
    return time.perf_counter() - start


def test_sparse_calls_cost_the_same_with_1000_buckets_as_with_10() -> None:
    """Every call rolls the window: one bucket later, or after the whole window. A walk over
    the buckets would make 1,000 buckets ~100x dearer than 10; here they cost the same."""
    for widths in (1.5, 20_000):  # gaps in bucket widths: the next bucket, or a long silence
        few = min(_cost(10, widths * 10.0 / 10) for _ in range(5))
        many = min(_cost(1000, widths * 10.0 / 1000) for _ in range(5))
        assert many < few * 2, (widths, few, many)
