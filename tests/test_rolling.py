"""The rolling window's running totals equal a brute-force count, and its costs are flat."""

from __future__ import annotations

import time
from math import floor

from hypothesis import given, settings
from hypothesis import strategies as st

from resilience._outcomes import ERRORS, FAILURE, KINDS, REJECTED, SUCCESS, TIMEOUT
from resilience._rolling import RollingWindow, statistics_of

events = st.lists(  # every kind but ERRORS, which the window keeps itself
    st.tuples(st.floats(min_value=0.0, max_value=50.0), st.integers(0, ERRORS - 1)),
    max_size=200,
)


def _brute(seen: list[tuple[int, int]], newest: int, buckets: int, rejections: bool) -> list[int]:
    expected = [0] * KINDS
    for i, k in seen:
        if i > newest - buckets:
            expected[k] += 1
    errors = (FAILURE, TIMEOUT, REJECTED) if rejections else (FAILURE, TIMEOUT)
    expected[ERRORS] = sum(expected[k] for k in errors)
    return expected


@settings(max_examples=300, deadline=None)
@given(
    length=st.floats(min_value=0.01, max_value=20.0),
    buckets=st.integers(1, 50),
    steps=events,
    read_at=st.floats(min_value=0.0, max_value=80.0),
    rejections=st.booleans(),
    flip_at=st.integers(0, 250),
)
def test_totals_equal_a_brute_force_count(
    length: float,
    buckets: int,
    steps: list[tuple[float, int]],
    read_at: float,
    rejections: bool,
    flip_at: int,
) -> None:
    """Counting, health and rolling (``tally``) against a recount from scratch, with
    ``count_rejections`` changed once on the way (``recount``)."""
    w = RollingWindow(length, buckets, rejections)
    inv = buckets / length
    now = 0.0
    seen: list[tuple[int, int]] = []  # (bucket index, kind)
    for step, (dt, kind) in enumerate(steps):
        if step == flip_at:
            rejections = not rejections
            w.recount(rejections)
        now += dt
        requests, errors = w.tally(now, kind)
        seen.append((floor(now * inv), kind))
        newest = max(i for i, _ in seen)
        expected = _brute(seen, newest, buckets, rejections)
        assert w.totals == expected
        assert (requests, errors) == (expected[SUCCESS] + expected[ERRORS], expected[ERRORS])
        assert w.health(now) == (requests, errors)
        assert statistics_of(w.totals).requests == requests
    at = now + read_at
    idx = max([floor(at * inv)] + [i for i, _ in seen])
    assert w.roll(at) == _brute(seen, idx, buckets, rejections)


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
