"""Rolling-window statistics of a command: ``buckets`` buckets covering ``length`` seconds.

Every cost is O(1) in the number of buckets, and rolling the window subtracts nothing:

* ``cum`` counts each outcome kind since the window was reset, and each live bucket keeps a
  snapshot of ``cum`` taken when it opened. The window is ``cum - base``, where ``base`` is
  the snapshot of the oldest live bucket: expiring buckets only pops snapshots off a deque
  (each bucket is pushed once and popped once, whatever the gap between calls);
* health reads the two kinds it needs (``SUCCESS`` and the running ``ERRORS``) straight from
  ``cum`` and ``base``; ``totals`` (all kinds) is built only for snapshots;
* ``end`` lets the hot path count straight into ``cum`` while ``now < end``.

``fast_until`` belongs to the circuit's success shortcut: until when a success may be counted
straight into ``cum`` without evaluating health (``-inf``: not now). The circuit sets it to
``end`` once the volume threshold is reached; every roll resets it, since forgetting old
buckets changes the error rate behind the shortcut's back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import sub

from ._outcomes import (
    ERRORS,
    FAILURE,
    FALLBACK_FAILED,
    FALLBACK_OK,
    KINDS,
    REJECTED,
    SHORT_CIRCUITED,
    SUCCESS,
    TIMEOUT,
)

__all__ = ["CircuitStatistics", "RollingWindow", "statistics_between", "statistics_of"]

_NEVER = -float("inf")


class RollingWindow:
    """Counts of each outcome kind over the last ``length`` seconds (bucket-granular)."""

    __slots__ = (
        "_error_below", "_inv_width", "_live", "_n", "_width", "base", "cum", "end", "fast_until",
    )

    def __init__(self, length: float, buckets: int, count_rejections: bool = True) -> None:
        #: kinds 1 (FAILURE) up to this one, excluded, are errors (REJECTED with count_rejections)
        self._error_below = REJECTED + 1 if count_rejections else REJECTED
        self._n = buckets
        self._width = length / buckets
        self._inv_width = buckets / length
        #: (bucket index, ``cum`` when it opened), oldest first
        self._live: deque[tuple[float, list[int]]] = deque()
        #: Counts since the last reset; a caller with ``now < end`` may count into it directly.
        self.cum = [0] * KINDS
        #: ``cum`` when the oldest live bucket opened (never written: snapshots are frozen).
        self.base = [0] * KINDS
        self.end = _NEVER
        self.fast_until = _NEVER

    @property
    def totals(self) -> list[int]:
        """The window's count of every kind (a new list)."""
        return list(map(sub, self.cum, self.base))

    def count(self, kind: int) -> int:
        return self.cum[kind] - self.base[kind]

    def add(self, now: float, kind: int) -> None:
        """Count one event of ``kind`` at time ``now``."""
        self.tally(now, kind)

    def roll(self, now: float) -> list[int]:
        """Forget what has expired at ``now``; return the totals (a new list)."""
        self.expire(now)
        return self.totals

    def expire(self, now: float) -> None:
        """Forget what has expired at ``now``."""
        if now >= self.end:
            self._expire((now * self._inv_width) // 1.0)
            self.end = _NEVER  # the next add opens the bucket of its own time
            self.fast_until = _NEVER

    def health(self, now: float) -> tuple[int, int]:
        """``(requests, errors)`` at ``now``, as the circuit's health sees them."""
        if now >= self.end:
            self.expire(now)
        cum, base = self.cum, self.base
        errors = cum[ERRORS] - base[ERRORS]
        return cum[SUCCESS] - base[SUCCESS] + errors, errors

    def recount(self, count_rejections: bool) -> None:
        """``count_rejections`` changed: recount ``ERRORS`` in ``cum`` and every snapshot."""
        self._error_below = REJECTED + 1 if count_rejections else REJECTED

        def recounted(counts: list[int]) -> list[int]:
            counts = counts[:]  # (snapshots stay frozen: a frozen window may still point at them)
            counts[ERRORS] = counts[FAILURE] + counts[TIMEOUT]
            if count_rejections:
                counts[ERRORS] += counts[REJECTED]
            return counts

        self.cum = recounted(self.cum)
        new = {id(snapshot): recounted(snapshot) for _, snapshot in self._live}
        self.base = new.get(id(self.base)) or recounted(self.base)
        self._live = deque((index, new[id(snapshot)]) for index, snapshot in self._live)
        self.invalidate()

    def tally(self, now: float, kind: int) -> tuple[int, int]:
        """Count one event of ``kind`` at ``now``; return ``health(now)`` after it.

        The circuit's path for every outcome that cannot take its shortcut, so opening a
        bucket is written out here (one frame: sparse calls roll the window every time). The
        bucket of ``now`` becomes the newest, and what has expired by then is forgotten;
        bucket indexes are whole floats."""
        cum = self.cum
        if now >= self.end:
            index = (now * self._inv_width) // 1.0
            live = self._live
            if not live:
                self.base = snapshot = cum[:]
                live.append((index, snapshot))
            elif live[-1][0] >= index:
                # still the newest bucket's time (after a read), or a clock that stepped
                # back: keep counting in the newest bucket
                index = live[-1][0]
            else:
                live.append((index, cum[:]))
                oldest_kept = index - self._n
                if live[0][0] <= oldest_kept:  # expired buckets: each is popped once
                    popleft = live.popleft
                    popleft()
                    while live[0][0] <= oldest_kept:
                        popleft()
                    self.base = live[0][1]
            self.end = (index + 1.0) * self._width
            self.fast_until = _NEVER
        cum[kind] += 1
        if kind and kind < self._error_below:  # (SUCCESS is 0)
            cum[ERRORS] += 1
        base = self.base
        errors = cum[ERRORS] - base[ERRORS]
        return cum[SUCCESS] - base[SUCCESS] + errors, errors

    def reset(self) -> None:
        self._live.clear()
        self.cum = [0] * KINDS
        self.base = [0] * KINDS
        self.end = _NEVER
        self.fast_until = _NEVER

    def invalidate(self) -> None:
        """Send the next outcome through the full health check (a configuration change)."""
        self.end = _NEVER
        self.fast_until = _NEVER

    def _expire(self, index: float) -> None:
        live = self._live
        oldest_kept = index - self._n + 1
        if live and live[0][0] < oldest_kept:
            popleft = live.popleft
            while live and live[0][0] < oldest_kept:
                popleft()
            self.base = live[0][1] if live else self.cum[:]


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


def statistics_between(cum: Sequence[int], base: Sequence[int]) -> CircuitStatistics:
    """The snapshot of a frozen window: a copy of ``cum`` and the ``base`` of that moment."""
    return statistics_of(list(map(sub, cum, base)))


def statistics_of(totals: Sequence[int]) -> CircuitStatistics:
    """The snapshot of a window's ``totals``."""
    errors = totals[ERRORS]
    requests = totals[SUCCESS] + errors
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
