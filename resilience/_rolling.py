"""Rolling-window counters: ``buckets`` buckets covering ``length`` seconds.

Built for the success fast path, which only bumps ``bucket[SUCCESS]`` and a small countdown:

* every kind has a running total (``totals``), kept by ``add``, but the fast path's successes
  reach ``totals[SUCCESS]`` only through ``sync()``, which the circuit calls whenever it leaves
  the fast regime (so a short-circuit can copy ``totals`` as they are);
* reads sum the successes over the live buckets (a read is rare, a success is not);
* ``countdown`` is how many more successes may be counted without re-evaluating health: the
  circuit sets it to the calls missing before the volume threshold (0 once it is reached,
  since a success can only lower the error rate), and any roll of the window sets it to 1,
  because forgetting old buckets changes the rate behind the fast path's back.

Only ``add`` rolls the window; reads (``totals_at``) compute what has expired without changing
anything, so health is always evaluated by the outcome that changed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import floor
from operator import itemgetter

__all__ = ["KINDS", "RollingWindow", "requests_of"]

# Kinds counted per bucket. The first four are the health counts (requests).
SUCCESS, FAILURE, TIMEOUT, REJECTED, SHORT_CIRCUITED, FALLBACK_OK, FALLBACK_FAILED = range(7)
KINDS = 7
_TOTALLED = range(1, KINDS)  # kinds whose running total is always exact
_first = itemgetter(SUCCESS)


class RollingWindow:
    """Counts of each kind over the last ``length`` seconds (bucket-granular)."""

    __slots__ = (
        "_counts", "_current", "_inv_width", "_n", "_width", "bucket", "countdown", "end",
        "totals",
    )

    def __init__(self, length: float, buckets: int) -> None:
        self._n = buckets
        self._width = length / buckets
        self._inv_width = buckets / length
        self._counts = [[0] * KINDS for _ in range(buckets)]
        # totals[SUCCESS] misses the fast path's successes until sync() (see the module doc)
        self.totals = [0] * KINDS
        self.countdown = 1
        self._current: int | None = None
        #: The newest bucket and the time it ends: a caller that has ``now < end`` may count
        #: a success straight into ``bucket`` (the hot path's shortcut around ``add``).
        self.bucket = self._counts[0]
        self.end = -float("inf")

    def add(self, now: float, kind: int) -> None:
        """Count one event of ``kind`` at time ``now``."""
        if now >= self.end:
            self._advance(now)
        self.bucket[kind] += 1
        self.totals[kind] += 1

    def successes(self) -> int:
        """Successes in the window as of the last ``add`` (fast-path ones included)."""
        return sum(map(_first, self._counts))

    def sync(self) -> None:
        """Make ``totals[SUCCESS]`` exact again (the fast path counts into buckets only)."""
        self.totals[SUCCESS] = self.successes()

    def totals_at(self, now: float) -> list[int]:
        """All totals as they read at ``now``, without rolling (successes recounted)."""
        totals = list(self.totals)
        cur = self._current
        if cur is None:
            return totals
        expired: set[int] = set()
        if now >= self.end:
            idx = floor(now * self._inv_width)
            if idx - cur >= self._n:
                return [0] * KINDS
            expired = {k % self._n for k in range(cur + 1, idx + 1)}
            for i in expired:
                for kind in _TOTALLED:
                    totals[kind] -= self._counts[i][kind]
        totals[SUCCESS] = sum(
            bucket[SUCCESS] for i, bucket in enumerate(self._counts) if i not in expired
        )
        return totals

    def reset(self) -> None:
        for bucket in self._counts:
            bucket[:] = [0] * KINDS
        self.totals[:] = [0] * KINDS
        self._current = None
        self.end = -float("inf")
        self.countdown = 1

    def invalidate(self) -> None:
        """Send the next ``add`` through the slow path (e.g. after a configuration change)."""
        self.end = -float("inf")
        self.countdown = 1

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
        # (idx < cur: a clock that stepped back keeps counting in the newest bucket)
        self.bucket = self._counts[cur % self._n]
        self.end = (cur + 1) * self._width
        self.countdown = 1


def requests_of(totals: Sequence[int]) -> int:
    return totals[SUCCESS] + totals[FAILURE] + totals[TIMEOUT] + totals[REJECTED]
