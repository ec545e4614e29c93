"""The circuit breaker of one command: Hystrix semantics, made deterministic.

All state lives here and changes only under the command's lock, in short critical sections
that never await: admission (state check + slot) and completion (slot + statistics + health).
Every admitted call carries the *generation* it was admitted in; an outcome acts on the state
only if that generation is still current, so slow calls from an earlier state change nothing.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._config import CommandConfig
from ._errors import CircuitOpenError, MaxConcurrencyError, _new_exception
from ._exporter import CommandSeries
from ._rolling import (
    FAILURE,
    FALLBACK_FAILED,
    FALLBACK_OK,
    REJECTED,
    SHORT_CIRCUITED,
    SUCCESS,
    TIMEOUT,
    RollingWindow,
    requests_of,
)
from ._threads import ThreadPool

__all__ = ["Circuit", "CircuitState", "CircuitStatistics"]

# Outcome kinds beyond the rolling window's: lifetime-only outcomes.
IGNORED, CANCELLED = 5, 6  # same indexes as resilience_command_calls_total's outcomes

_CLOSED, _OPEN, _HALF_OPEN = 0, 1, 2


class CircuitState(enum.StrEnum):
    """State of a circuit; a ``str`` enum (``"closed"``, ``"open"``, ``"half_open"``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)


@dataclass(frozen=True, slots=True)
class CircuitStatistics:
    """Snapshot of a command's rolling window (``requests`` = the health counts' sum)."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    rejections: int = 0
    short_circuits: int = 0
    fallback_successes: int = 0
    fallback_failures: int = 0
    error_percent: float = 0.0


class Circuit:
    """State, rolling statistics and concurrency slots of one command in one registry."""

    __slots__ = (
        "__weakref__", "_calls", "_clock", "_config", "_duration", "_fast_gen", "_fast_limit",
        "_gen", "_in_flight", "_lock", "_max", "_now", "_open_until", "_opened_at",
        "_real_clock", "_refused", "_series", "_state", "_threads", "_timeout", "_trial_at",
        "_trial_busy", "_window", "name",
    )

    def __init__(
        self,
        name: str,
        config: CommandConfig,
        series: CommandSeries,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self._series = series
        self._lock = series.lock
        self._calls = series.calls
        self._duration = series.duration
        self._clock = clock
        self._real_clock = clock is time.monotonic
        # Durations always use real time; with the real clock one reading serves both.
        self._now: Callable[[], float] = clock if self._real_clock else time.perf_counter
        self._state = _CLOSED
        self._gen = 0
        self._in_flight = 0
        self._opened_at = 0.0
        self._trial_busy = False
        self._trial_at = 0.0
        self._threads: ThreadPool | None = None
        self._refused: Any = None  # a CommandError handed from _admit_locked to its caller
        self._window = RollingWindow(config.rolling_window, config.buckets)
        self._config = config
        with self._lock:
            self._apply(config)
        series.circuits.add(self)

    # -- public introspection --------------------------------------------------------------

    @property
    def config(self) -> CommandConfig:
        return self._config

    @property
    def state(self) -> CircuitState:
        return _STATES[self.state_index]

    @property
    def state_index(self) -> int:
        return _OPEN if self._config.force_open else self._state

    @property
    def in_flight(self) -> int:
        """Executions holding a concurrency slot (threads past their timeout included)."""
        return self._in_flight

    def statistics(self) -> CircuitStatistics:
        """A snapshot of the rolling window."""
        with self._lock:
            return self._snapshot(self._clock())

    def error_ratio(self) -> float:
        """Rolling error ratio 0..1 (read by the metrics hub with the lock held)."""
        t = self._window.totals_at(self._clock())
        requests = requests_of(t)
        return (requests - t[SUCCESS]) / requests if requests else 0.0

    def __repr__(self) -> str:
        return f"<Circuit {self.name!r} {self.state.value} in_flight={self._in_flight}>"

    # -- configuration -----------------------------------------------------------------------

    def configure(self, config: CommandConfig) -> None:
        with self._lock:
            old = self._config
            if (old.rolling_window, old.buckets) != (config.rolling_window, config.buckets):
                self._window = RollingWindow(config.rolling_window, config.buckets)
            self._config = config
            if config.force_closed and self._state != _CLOSED:
                self._to_closed()
            self._apply(config)
            self._window.invalidate()  # the next outcome re-evaluates health in full

    def flush(self) -> None:
        """Forget state and rolling statistics; in-flight calls become stale."""
        with self._lock:
            self._to_closed()
            self._apply(self._config)

    def _apply(self, config: CommandConfig) -> None:
        """Cache what the hot path reads (lock held); called after every state change."""
        self._max = config.max_concurrent_requests
        self._timeout = config.timeout
        self._open_until = self._opened_at + config.sleep_window
        fast = self._state == _CLOSED and not config.force_open
        # Admission: a free slot below this limit means "closed, not forced, admit".
        self._fast_limit = self._max if fast else 0
        # Completion: an outcome of this generation may take the counting shortcut.
        self._fast_gen = self._gen if fast and self._real_clock else -1
        if self._fast_gen < 0:
            self._window.sync()  # leaving the shortcut: make the success total exact

    # -- admission (lock held) ------------------------------------------------------------------

    def _admit_locked(self) -> int:
        """Admit one call (lock held): its generation, or -1 with the error in ``_refused``.

        The refusal is handed over, not raised, so the caller raises it once, from its own
        frame, after giving the lock back.
        """
        state = self._state
        if state == _OPEN:  # the common refusal first
            now = self._clock()
            if self._config.force_open:
                return self._short_circuit(now, None)
            if now < self._open_until:
                return self._short_circuit(now, self._open_until - now)
        elif self._config.force_open:
            return self._short_circuit(self._clock(), None)
        trial = False
        if state != _CLOSED:
            now = self._clock()
            if state == _HALF_OPEN and self._trial_busy:
                trial_until = self._trial_at + self._config.sleep_window
                if now < trial_until:
                    return self._short_circuit(now, trial_until - now)
            # A trial: the first call after the sleep window, or after a trial that ended
            # without a verdict, or one more sleep window after a trial that still hangs.
            trial = True
            self._state = _HALF_OPEN
            self._gen += 1
            self._trial_busy = True
            self._trial_at = now
        if self._in_flight >= self._max:
            if trial:
                self._trial_busy = False  # give the trial permit back at once
            self._calls[REJECTED] += 1
            self._record_window(self._gen, REJECTED)
            self._refused = MaxConcurrencyError(self.name, limit=self._max)
            return -1
        self._in_flight += 1
        return self._gen

    def _short_circuit(self, now: float, retry_after: float | None) -> int:
        # The fast-fail path: counted inline, the error built without running __init__.
        self._calls[SHORT_CIRCUITED] += 1
        w = self._window
        if now >= w.end:
            w.add(now, SHORT_CIRCUITED)
        else:
            w.bucket[SHORT_CIRCUITED] += 1
            w.totals[SHORT_CIRCUITED] += 1
        exc = _new_exception(CircuitOpenError, self.name)
        # retry_after > 0 (or None when forced); totals are exact here, see _apply
        exc._info = (self.name, retry_after, tuple(w.totals))
        self._refused = exc
        return -1

    # -- completion (lock held) -------------------------------------------------------------------

    def _record(self, gen: int, kind: int, duration: float | None) -> None:
        """Count an outcome; act on the state only if ``gen`` is current."""
        if kind:  # successes are not counted: see CommandSeries
            self._calls[kind] += 1
        if duration is not None:
            self._duration.observe(duration)
        if kind < IGNORED:
            self._record_window(gen, kind)
        elif gen == self._gen and self._state == _HALF_OPEN:
            self._trial_busy = False  # cancelled or ignored trial: the next call may trial

    def _record_window(self, gen: int, kind: int) -> None:
        if gen != self._gen:
            return  # stale: lifetime metrics only
        state = self._state
        if state == _CLOSED:
            now = self._clock()
            self._window.add(now, kind)
            self.check_health(now)
        elif state == _HALF_OPEN:
            if kind == SUCCESS:
                self._to_closed()
            elif kind != REJECTED:  # failure or timeout of the trial
                now = self._clock()
                self._window.add(now, kind)
                self._to_open(now)

    def check_health(self, now: float) -> None:
        """Closed -> open when the volume and error-percentage thresholds are both met."""
        w = self._window
        t = w.totals
        errors = t[FAILURE] + t[TIMEOUT] + t[REJECTED]
        requests = w.successes() + errors
        cfg = self._config
        if (
            requests
            and requests >= cfg.request_volume_threshold
            and 100 * errors >= cfg.error_percent_threshold * requests
            and not cfg.force_closed
        ):
            self._to_open(now)
        else:
            # Successes below the volume threshold may complete it: count them down.
            w.countdown = max(cfg.request_volume_threshold - requests, 0)

    def _record_fallback(self, ok: bool) -> None:
        self._series.fallbacks[0 if ok else 1] += 1
        self._window.add(self._clock(), FALLBACK_OK if ok else FALLBACK_FAILED)

    def _to_open(self, now: float) -> None:
        self._state = _OPEN
        self._gen += 1
        self._opened_at = now
        self._trial_busy = False
        self._apply(self._config)

    def _to_closed(self) -> None:
        self._state = _CLOSED
        self._gen += 1
        self._trial_busy = False
        self._window.reset()
        self._apply(self._config)

    def _snapshot(self, now: float) -> CircuitStatistics:
        return _statistics(self._window.totals_at(now))

    # -- worker threads for plain def ----------------------------------------------------------

    def threads(self) -> ThreadPool:
        pool = self._threads
        if pool is None:
            with self._lock:
                if self._threads is None:
                    self._threads = ThreadPool(self.name)
                pool = self._threads
        return pool


def _statistics(t: Sequence[int]) -> CircuitStatistics:
    requests = requests_of(t)
    return CircuitStatistics(
        requests=requests,
        successes=t[SUCCESS],
        failures=t[FAILURE],
        timeouts=t[TIMEOUT],
        rejections=t[REJECTED],
        short_circuits=t[SHORT_CIRCUITED],
        fallback_successes=t[FALLBACK_OK],
        fallback_failures=t[FALLBACK_FAILED],
        error_percent=100.0 * (requests - t[SUCCESS]) / requests if requests else 0.0,
    )
