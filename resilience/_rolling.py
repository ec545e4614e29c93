"""Rolling-window statistics of a command: ``buckets`` buckets covering ``length`` seconds.

Every cost is O(1) in the number of buckets, and rolling the window subtracts nothing:

* ``cum`` counts each outcome kind since the window was reset, and each live bucket keeps a
  snapshot of ``cum`` taken when it opened. The window is ``cum - base``, where ``base`` is
  the snapshot of the oldest live bucket: expiring buckets only pops snapshots off a deque
  (each bucket is pushed once and popped once, whatever the gap between calls);
* health reads the four kinds it needs straight from ``cum`` and ``base``; ``totals`` (all
  kinds) is built only for snapshots;
* ``end`` lets the hot path count straight into ``cum`` while ``now < end``.

``countdown`` belongs to the circuit's success shortcut: how many more successes may be
counted without evaluating health. Every roll sets it to 1, since forgetting old buckets
changes the error rate behind the shortcut's back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from math import floor
from operator import sub

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

    __slots__ = ("_inv_width", "_live", "_n", "_width", "base", "countdown", "cum", "end")

    def __init__(self, length: float, buckets: int) -> None:
        self._n = buckets
        self._width = length / buckets
        self._inv_width = buckets / length
        #: (bucket index, ``cum`` when it opened), oldest first
        self._live: deque[tuple[int, list[int]]] = deque()
        #: Counts since the last reset; a caller with ``now < end`` may count into it directly.
        self.cum = [0] * KINDS
        #: ``cum`` when the oldest live bucket opened (never written: snapshots are frozen).
        self.base = [0] * KINDS
        self.end = _NEVER
        self.countdown = 1

    @property
    def totals(self) -> list[int]:
        """The window's count of every kind (a new list)."""
        return list(map(sub, self.cum, self.base))

    def count(self, kind: int) -> int:
        return self.cum[kind] - self.base[kind]

    def add(self, now: float, kind: int) -> None:
        """Count one event of ``kind`` at time ``now``."""
        if now >= self.end:
            self.open_bucket(now)
        self.cum[kind] += 1

    def roll(self, now: float) -> list[int]:
        """Forget what has expired at ``now``; return the totals (a new list)."""
        self.expire(now)
        return self.totals

    def expire(self, now: float) -> None:
        """Forget what has expired at ``now``."""
        if now >= self.end:
            self._expire(floor(now * self._inv_width))
            self.end = _NEVER  # the next add opens the bucket of its own time
            self.countdown = 1

    def health(self, now: float, count_rejections: bool) -> tuple[int, int]:
        """``(requests, errors)`` at ``now``, as the circuit's health sees them."""
        if now >= self.end:
            self.expire(now)
        cum, base = self.cum, self.base
        errors = cum[FAILURE] - base[FAILURE] + cum[TIMEOUT] - base[TIMEOUT]
        if count_rejections:
            errors += cum[REJECTED] - base[REJECTED]
        return cum[SUCCESS] - base[SUCCESS] + errors, errors

    def reset(self) -> None:
        self._live.clear()
        self.cum = [0] * KINDS
        self.base = [0] * KINDS
        self.end = _NEVER
        self.countdown = 1

    def invalidate(self) -> None:
        """Send the next outcome through the full health check (a configuration change)."""
        self.end = _NEVER
        self.countdown = 1

    def _expire(self, index: int) -> None:
        live = self._live
        oldest_kept = index - self._n + 1
        if live and live[0][0] < oldest_kept:
            popleft = live.popleft
            while live and live[0][0] < oldest_kept:
                popleft()
            self.base = live[0][1] if live else self.cum[:]

    def open_bucket(self, now: float) -> None:
        """Start counting at ``now`` (``now >= end``): the bucket of ``now`` becomes the newest,
        and what has expired by then is forgotten."""
        index = floor(now * self._inv_width)
        live = self._live
        if live and live[0][0] <= index - self._n:
            self._expire(index)
        if live and live[-1][0] >= index:
            # still the newest bucket's time (after a read), or a clock that stepped back:
            # keep counting in the newest bucket
            index = live[-1][0]
        else:
            snapshot = self.cum[:]
            live.append((index, snapshot))
            if len(live) == 1:
                self.base = snapshot
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
