"""Rolling-window counters: ``buckets`` buckets covering ``length`` seconds.

Totals are kept incrementally, so recording is O(1) and reading a health figure is O(1);
rolling forward zeroes only the buckets that expired. Only ``add`` rolls the window: reads
(``totals_at``) compute what has expired without changing anything, so health is always
evaluated by the outcome that changed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import floor

__all__ = ["KINDS", "RollingWindow"]

# Kinds counted per bucket. The first four are the health counts (requests).
SUCCESS, FAILURE, TIMEOUT, REJECTED, SHORT_CIRCUITED, FALLBACK_OK, FALLBACK_FAILED = range(7)
KINDS = 7
_HEALTH = 4


class RollingWindow:
    """Counts of each kind over the last ``length`` seconds (bucket-granular)."""

    __slots__ = (
        "_counts", "_current", "_inv_width", "_n", "_width", "bucket", "end", "requests",
        "totals",
    )

    def __init__(self, length: float, buckets: int) -> None:
        self._n = buckets
        self._width = length / buckets
        self._inv_width = buckets / length
        self._counts = [[0] * KINDS for _ in range(buckets)]
        self.totals = [0] * KINDS
        #: Sum of the health counts (success + failure + timeout + rejected) in the window.
        self.requests = 0
        self._current: int | None = None
        #: The newest bucket and the time it ends: a caller that has ``now < end`` may count
        #: straight into ``bucket``, ``totals`` and ``requests`` (the hot path's shortcut).
        self.bucket = self._counts[0]
        self.end = -float("inf")

    def add(self, now: float, kind: int) -> None:
        """Count one event of ``kind`` at time ``now``."""
        if now >= self.end:
            self._advance(now)
        self.bucket[kind] += 1
        self.totals[kind] += 1
        if kind < _HEALTH:
            self.requests += 1

    def totals_at(self, now: float) -> list[int]:
        """The totals as they read at ``now``, without rolling the window."""
        totals = list(self.totals)
        cur = self._current
        if cur is None or now < self.end:
            return totals
        idx = floor(now * self._inv_width)
        if idx - cur >= self._n:
            return [0] * KINDS
        for k in range(cur + 1, idx + 1):
            bucket = self._counts[k % self._n]
            for kind in range(KINDS):
                totals[kind] -= bucket[kind]
        return totals

    def reset(self) -> None:
        for bucket in self._counts:
            bucket[:] = [0] * KINDS
        self.totals[:] = [0] * KINDS
        self.requests = 0
        self._current = None
        self.end = -float("inf")

    def invalidate(self) -> None:
        """Send the next ``add`` through the slow path (e.g. after a configuration change)."""
        self.end = -float("inf")

    def _advance(self, now: float) -> None:
        idx = floor(now * self._inv_width)
        cur = self._current
        if cur is None or idx - cur >= self._n:
            self.reset()
            cur = self._current = idx
        elif idx > cur:
            n = self._n
            totals = self.totals
            for k in range(cur + 1, idx + 1):
                bucket = self._counts[k % n]
                for kind in range(KINDS):
                    totals[kind] -= bucket[kind]
                bucket[:] = [0] * KINDS
            cur = self._current = idx
            self.requests = sum(totals[:_HEALTH])
        # (idx < cur: a clock that stepped back keeps counting in the newest bucket)
        self.bucket = self._counts[cur % self._n]
        self.end = (cur + 1) * self._width


def requests_of(totals: Sequence[int]) -> int:
    return totals[SUCCESS] + totals[FAILURE] + totals[TIMEOUT] + totals[REJECTED]
