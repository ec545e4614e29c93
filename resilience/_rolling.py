"""Rolling-window statistics of a command: ``buckets`` buckets covering ``length`` seconds.

Every cost is O(1) in the number of buckets:

* ``totals`` is a running total per outcome kind, so health and ``statistics()`` read it
  directly (no sum over buckets);
* only buckets that were written are kept, oldest first, in a deque; rolling the window pops
  the expired ones and subtracts them from the totals. Each bucket is pushed once and popped
  once, so rolling is O(1) amortised whatever the gap between calls (a call after a long
  silence pops what is there, it does not walk 1,000 empty buckets);
* ``bucket`` and ``end`` let the hot path count straight into the current bucket while
  ``now < end``.

``countdown`` belongs to the circuit's success shortcut: how many more successes may be
counted without evaluating health. Every roll sets it to 1, since forgetting old buckets
changes the error rate behind the shortcut's back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from math import floor

from ._outcomes import (
    FAILURE,
    FALLBACK_FAILED,
    FALLBACK_OK,
    KINDS,
    REJECTED,
    SHORT_CIRCUITED,
    SUCCESS,
    TIMEOUT,
)

__all__ = ["CircuitStatistics", "RollingWindow", "statistics_of"]

_NEVER = -float("inf")


class RollingWindow:
    """Counts of each outcome kind over the last ``length`` seconds (bucket-granular)."""

    __slots__ = ("_inv_width", "_live", "_n", "_width", "bucket", "countdown", "end", "totals")

    def __init__(self, length: float, buckets: int) -> None:
        self._n = buckets
        self._width = length / buckets
        self._inv_width = buckets / length
        self._live: deque[tuple[int, list[int]]] = deque()  # (bucket index, counts), oldest first
        self.totals = [0] * KINDS
        #: The newest bucket; a caller with ``now < end`` may count into it directly.
        self.bucket = [0] * KINDS
        self.end = _NEVER
        self.countdown = 1

    def add(self, now: float, kind: int) -> None:
        """Count one event of ``kind`` at time ``now``."""
        if now >= self.end:
            self._open_bucket(now)
        self.bucket[kind] += 1
        self.totals[kind] += 1

    def roll(self, now: float) -> list[int]:
        """Forget what has expired at ``now``; return the totals (the live list, not a copy)."""
        if now >= self.end:
            self._expire(floor(now * self._inv_width))
            self.end = _NEVER  # the next add opens the bucket of its own time
            self.countdown = 1
        return self.totals

    def reset(self) -> None:
        self._live.clear()
        self.totals = [0] * KINDS
        self.bucket = [0] * KINDS
        self.end = _NEVER
        self.countdown = 1

    def invalidate(self) -> None:
        """Send the next outcome through the full health check (a configuration change)."""
        self.end = _NEVER
        self.countdown = 1

    def _expire(self, index: int) -> None:
        live = self._live
        oldest_kept = index - self._n + 1
        totals = self.totals
        while live and live[0][0] < oldest_kept:
            counts = live.popleft()[1]
            for kind in range(KINDS):
                totals[kind] -= counts[kind]

    def _open_bucket(self, now: float) -> None:
        index = floor(now * self._inv_width)
        self._expire(index)
        live = self._live
        if live and live[-1][0] >= index:
            # still the newest bucket's time (after a read), or a clock that stepped back:
            # keep counting in the newest bucket
            self.bucket = live[-1][1]
            index = max(index, live[-1][0])
        else:
            self.bucket = [0] * KINDS
            live.append((index, self.bucket))
        self.end = (index + 1) * self._width
        self.countdown = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStatistics:
    """Snapshot of a command's rolling window.

    ``requests`` is what the circuit's health counts: successes, failures, timeouts and (with
    ``count_rejections``) rejections; ``error_percent`` is the errors' share of it.
    """

    requests: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    rejections: int = 0
    short_circuits: int = 0
    fallback_successes: int = 0
    fallback_failures: int = 0
    error_percent: float = 0.0


def health(totals: Sequence[int], count_rejections: bool) -> tuple[int, int]:
    """``(requests, errors)`` as the circuit's health sees them."""
    errors = totals[FAILURE] + totals[TIMEOUT]
    if count_rejections:
        errors += totals[REJECTED]
    return totals[SUCCESS] + errors, errors


def statistics_of(totals: Sequence[int], count_rejections: bool) -> CircuitStatistics:
    requests, errors = health(totals, count_rejections)
    return CircuitStatistics(
        requests=requests,
        successes=totals[SUCCESS],
        failures=totals[FAILURE],
        timeouts=totals[TIMEOUT],
        rejections=totals[REJECTED],
        short_circuits=totals[SHORT_CIRCUITED],
        fallback_successes=totals[FALLBACK_OK],
        fallback_failures=totals[FALLBACK_FAILED],
        error_percent=100.0 * errors / requests if requests else 0.0,
    )
