"""Rolling-window counters: ``buckets`` buckets covering ``length`` seconds.

Totals are kept incrementally, so recording is O(1) and reading a health figure is O(1);
rolling forward zeroes only the buckets that expired.
"""

from __future__ import annotations

from math import floor

__all__ = ["KINDS", "RollingWindow"]

# Kinds counted per bucket. The first four are the health counts (requests).
SUCCESS, FAILURE, TIMEOUT, REJECTED, SHORT_CIRCUITED, FALLBACK_OK, FALLBACK_FAILED = range(7)
KINDS = 7


class RollingWindow:
    """Counts of each kind over the last ``length`` seconds (bucket-granular)."""

    __slots__ = ("_counts", "_current", "_inv_width", "_n", "_width", "bucket", "end", "totals")

    def __init__(self, length: float, buckets: int) -> None:
        self._n = buckets
        self._width = length / buckets
        self._inv_width = buckets / length
        self._counts = [[0] * KINDS for _ in range(buckets)]
        self.totals = [0] * KINDS
        self._current: int | None = None
        #: The newest bucket and the time it ends: a caller that has ``now < end`` may count
        #: straight into ``bucket`` and ``totals`` (the hot path's shortcut around ``add``).
        self.bucket = self._counts[0]
        self.end = -float("inf")

    def add(self, now: float, kind: int) -> None:
        """Count one event of ``kind`` at time ``now``."""
        if now >= self.end:
            self.advance(now)
        self.bucket[kind] += 1
        self.totals[kind] += 1

    def advance(self, now: float) -> None:
        """Forget what fell out of the window by ``now`` (before reading ``totals``)."""
        idx = floor(now * self._inv_width)
        if idx != self._current:
            self._roll(idx)
            cur = self._current
            assert cur is not None
            self.bucket = self._counts[cur % self._n]
            self.end = (cur + 1) * self._width

    def reset(self) -> None:
        for bucket in self._counts:
            bucket[:] = [0] * KINDS
        self.totals[:] = [0] * KINDS
        self._current = None
        self.end = -float("inf")

    def _roll(self, idx: int) -> None:
        cur = self._current
        if cur is None or idx - cur >= self._n:
            self.reset()
            self._current = idx
            return
        if idx < cur:  # a clock that stepped back: keep counting in the newest bucket
            return
        n = self._n
        totals = self.totals
        for k in range(cur + 1, idx + 1):
            bucket = self._counts[k % n]
            for kind in range(KINDS):
                totals[kind] -= bucket[kind]
            bucket[:] = [0] * KINDS
        self._current = idx

    @property
    def requests(self) -> int:
        t = self.totals
        return t[SUCCESS] + t[FAILURE] + t[TIMEOUT] + t[REJECTED]
