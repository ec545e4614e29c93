"""The circuit breaker of one command: Hystrix semantics, made deterministic.

:class:`CircuitCore` owns every piece of a command's state (circuit state, concurrency slots,
slot waiters, rolling window, lifetime counters) and changes it only under the command's
lock, in short critical sections that never await or call user code. Every admitted call
carries the *generation* it was admitted in; an outcome acts on the state only if that
generation is still current, so slow calls from an earlier state change nothing.

State changes produce events; they are queued under the lock and published by the caller
after it let go (:meth:`CircuitCore.take_events`), so subscribers and the log run outside
every lock. Users see a command only through its read-only view, ``_circuit_view.Circuit``.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._config import CommandConfig
from ._errors import CommandError, MaxConcurrencyError, circuit_open
from ._events import EventBus, StateChange
from ._metrics_records import observe_duration
from ._outcomes import (
    FALLBACK_FAILED,
    FALLBACK_OK,
    IGNORED,
    REJECTED,
    RETRIES,
    SHORT_CIRCUITED,
    SUCCESS,
)
from ._rolling import CircuitStatistics, RollingWindow, statistics_of

if TYPE_CHECKING:
    from ._exporter import CommandSeries
    from ._threads import ThreadPool

__all__ = [
    "LEASED", "LEASE_AGAIN", "LEASE_REFUSED", "NEED_WAITER", "REFUSED", "STATES", "WAITING",
    "CircuitCore", "CircuitState", "SharedState",
]

CLOSED, OPEN, HALF_OPEN = 0, 1, 2

#: What recorded durations are measured with (real time, whatever clock a registry uses for
#: its windows; with the default clock one reading serves both).
timer = time.monotonic

#: ``admit`` results that are not a generation.
REFUSED, NEED_WAITER, WAITING = -1, -2, -3


class CircuitState(enum.StrEnum):
    """State of a circuit; a ``str`` enum (``"closed"``, ``"open"``, ``"half_open"``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: The states by index (``CircuitCore.state_index``).
STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)


class SlotWaiter(Protocol):
    """A caller waiting for a concurrency slot (see ``_backend`` and ``_command``)."""

    state: int  # W_WAITING -> W_GRANTED or W_GIVEN_UP, changed under the command's lock
    gen: int  # the generation it was admitted in, set when queued

    def wake(self) -> None: ...  # callable from any thread, never blocks


# SlotWaiter.state values
W_WAITING, W_GRANTED, W_GIVEN_UP = 0, 1, 2

#: ``SharedState.lease`` results: run the trial; refuse the call; the state changed, admit again.
LEASED, LEASE_REFUSED, LEASE_AGAIN = 0, 1, 2


class SharedState(Protocol):
    """A shared store's side of one circuit (``resilience._shared_circuit``), set on
    ``CircuitCore.shared``. Both methods are called with the lock held."""

    def lease(self, core: CircuitCore, now: float) -> int:
        """Before a trial is admitted: LEASED, LEASE_REFUSED (another process runs the trial;
        ``open_until`` now says until when) or LEASE_AGAIN (the state changed meanwhile).
        May let go of the lock for the one round trip this rare path makes."""
        ...

    def changed(self, reason: str | None) -> None:
        """A transition happened (``_to_open``/``_to_closed``): queue what to publish."""
        ...


class CircuitCore:
    """State, statistics and concurrency slots of one command in one registry.

    Attributes are the package's own (the command runner's hot path reads and writes them
    inline, under ``lock``); users see only :class:`Circuit`.
    """

    __slots__ = (
        "__weakref__", "bus", "clock", "config", "counts",
        "events", "failed_if", "fast_gen", "gen", "ignore", "in_flight", "limit", "lock",
        "max", "max_wait", "name", "open_until", "opened_at", "refused", "retry", "series",
        "shared", "state", "threads", "timeout", "token", "trial_at", "trial_busy", "trip_percent",
        "volume", "waiters", "window",
    )

    def __init__(
        self,
        name: str,
        config: CommandConfig,
        series: CommandSeries,
        clock: Callable[[], float],
        bus: EventBus,
    ) -> None:
        self.name = name
        self.series = series
        self.lock = series.lock
        self.token = series.lock.token  # the hot path takes and gives the lock inline
        self.counts = series.counts  # calls by outcome, then the duration histogram
        self.clock = clock
        self.bus = bus
        self.state = CLOSED
        self.gen = 0
        self.in_flight = 0
        self.opened_at = 0.0
        self.trial_busy = False
        self.trial_at = 0.0
        self.threads: ThreadPool | None = None
        self.shared: SharedState | None = None  # a shared store's hook (Registry(store=...))
        self.refused: CommandError | None = None  # handed from admit() to its caller
        self.events: list[StateChange] = []
        self.waiters: deque[SlotWaiter] = deque()
        self.window = RollingWindow(config.rolling_window, config.buckets, config.count_rejections)
        self.config = config
        with self.lock:
            self._apply()
        series.circuits.add(self)

    # -- read by the metrics collector (lock held) ----------------------------------------

    @property
    def state_index(self) -> int:
        return OPEN if self.config.force_open else self.state

    def error_ratio(self) -> float:
        requests, errors = self.window.health(self.clock())
        return errors / requests if requests else 0.0

    def snapshot(self) -> CircuitStatistics:
        """The rolling window now (lock held)."""
        return statistics_of(self.window.roll(self.clock()))

    # -- configuration (lock held by the caller of these) ---------------------------------

    def configure(self, config: CommandConfig) -> None:
        old = self.config
        before = self.state_index
        if (old.rolling_window, old.buckets) != (config.rolling_window, config.buckets):
            self.window = RollingWindow(
                config.rolling_window, config.buckets, config.count_rejections
            )
        elif old.count_rejections != config.count_rejections:
            self.window.recount(config.count_rejections)
        self.config = config
        reason = "configured"
        if config.force_closed and self.state != CLOSED:
            self._to_closed("forced_closed")
        elif config.force_open and not old.force_open:
            reason = "forced_open"
        elif old.force_open and not config.force_open:
            reason = "unforced"
        self._apply()
        self.window.invalidate()  # the next outcome re-evaluates health in full
        if self.state_index != before and reason != "configured":
            self._event(STATES[before], STATES[self.state_index], reason)
        while self.waiters and self.in_flight < self.max:  # the limit was raised
            if self._grant_next():
                self.in_flight += 1

    def flush(self) -> None:
        """Forget state and rolling statistics; in-flight calls become stale."""
        before = self.state_index
        self._to_closed(None)
        if self.state_index != before:
            self._event(STATES[before], STATES[self.state_index], "flush")

    def _apply(self) -> None:
        """Cache what the hot path reads; called after every state or config change."""
        config = self.config
        self.max = config.max_concurrent_requests
        self.timeout = config.timeout
        self.max_wait = config.max_wait
        self.failed_if = config.failed_if
        self.retry = config.retry
        self.ignore = config.ignore_exceptions
        self.volume = config.request_volume_threshold
        # (100 * errors >= trip_percent * requests: never true while forced closed)
        self.trip_percent = float("inf") if config.force_closed else config.error_percent_threshold
        self.open_until = self.opened_at + config.sleep_window
        fast = self.state == CLOSED and not config.force_open
        # Admission shortcut: a free slot below this limit means "closed, not forced, admit".
        self.limit = self.max if fast else 0
        # Completion shortcut: an outcome of this generation may count straight into the bucket.
        self.fast_gen = self.gen if fast else -1

    # -- admission (lock held) ------------------------------------------------------------

    def admit(self, ticket: list[int], waiter: SlotWaiter | None = None) -> int:
        """Admit one call: its generation, or REFUSED (the error in ``refused``), or
        NEED_WAITER (call again with a waiter), or WAITING (``waiter`` was queued).

        The generation of a slot taken is also appended to ``ticket`` on the line that takes
        it, so a caller interrupted before it sees the return value still knows."""
        state = self.state
        config = self.config
        if state == OPEN and not config.force_open:  # the common refusal first
            now = self.clock()
            if now < self.open_until:
                return self._short_circuit(now, self.open_until - now)
        elif config.force_open:
            return self._short_circuit(self.clock(), None)
        trial = False
        if state != CLOSED:
            now = self.clock()
            if state == HALF_OPEN and self.trial_busy:
                sleep = config.sleep_window
                trial_until = self.trial_at + sleep
                if sleep == 0 or now < trial_until:
                    return self._short_circuit(now, max(trial_until - now, 0.0))
            # A trial: the first call after the sleep window, or after a trial that ended
            # without a verdict, or one more sleep window after a trial that still hangs.
            shared = self.shared
            if shared is not None:  # a shared store: one trial across processes (a lease)
                verdict = shared.lease(self, now)
                if verdict == LEASE_AGAIN:
                    return self.admit(ticket, waiter)
                now = self.clock()
                if verdict == LEASE_REFUSED:
                    return self._short_circuit(now, max(self.open_until - now, 0.0))
            trial = True
            if state == OPEN:
                self.state = HALF_OPEN
                self._event(CircuitState.OPEN, CircuitState.HALF_OPEN, "trial")
            self.gen += 1
            self.trial_busy = True
            self.trial_at = now
            self._apply()
        if self.in_flight < self.max and not self.waiters:
            # one line: a KeyboardInterrupt lands before or after both, never between
            self.in_flight += 1; ticket.append(self.gen); return self.gen  # noqa: E702
        if not trial and self.max_wait > 0:
            if waiter is None:
                return NEED_WAITER
            waiter.gen = self.gen
            self.waiters.append(waiter)
            return WAITING
        if trial:
            self.trial_busy = False  # give the trial permit back at once
        self.counts[REJECTED] += 1
        self.record_window(self.gen, REJECTED)
        self.refused = MaxConcurrencyError(self.name, limit=self.max)
        return REFUSED

    def _short_circuit(self, now: float, retry_after: float | None) -> int:
        self.counts[SHORT_CIRCUITED] += 1
        w = self.window
        if now < w.end:
            w.cum[SHORT_CIRCUITED] += 1
        else:
            w.tally(now, SHORT_CIRCUITED)
        # The window now, frozen for the error's statistics: a copy of ``cum`` beside the
        # never-written ``base`` (~40 ns, where its totals cost ~400), turned into a snapshot
        # only if somebody reads it (``statistics_between``).
        self.refused = circuit_open(self.name, retry_after, (w.cum[:], w.base))
        return REFUSED

    def try_admit(
        self, ticket: list[int], waiter: SlotWaiter | None
    ) -> tuple[int, CommandError | None, list[StateChange] | None]:
        """``admit`` plus what its caller needs after letting go of the lock: the refusal to
        raise (if any) and the events to publish."""
        gen = self.admit(ticket, waiter)
        refused = self.refused
        self.refused = None
        return gen, refused, self.take_events()

    def leave_queue(self, waiter: SlotWaiter) -> None:
        """An interrupted waiter leaves the queue, passing on a slot granted meanwhile."""
        if not self.give_up(waiter):
            self.release()

    def end_wait(
        self, waiter: SlotWaiter
    ) -> tuple[int, CommandError | None, list[StateChange] | None]:
        """A waiter woke up or its ``max_wait`` passed: its generation if it was granted a
        slot, else REFUSED with the rejection to raise (counted) and the events."""
        if not self.give_up(waiter):
            return waiter.gen, None, None
        self.reject_waiter(waiter.gen)
        refused = self.refused
        self.refused = None
        return REFUSED, refused, self.take_events()

    def count(self, kind: int) -> None:
        """Count a lifetime outcome only (e.g. a call cancelled before admission)."""
        self.counts[kind] += 1

    def give_up(self, waiter: SlotWaiter) -> bool:
        """A waiter stops waiting (max_wait passed, or cancelled): ``True`` if it left the
        queue; ``False`` if it was granted a slot meanwhile (it holds one now)."""
        if waiter.state == W_GRANTED:
            return False
        waiter.state = W_GIVEN_UP
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass
        return True

    def reject_waiter(self, gen: int) -> None:
        """Count a waiter whose ``max_wait`` passed as a rejection."""
        self.counts[REJECTED] += 1
        self.record_window(gen, REJECTED)
        self.refused = MaxConcurrencyError(self.name, limit=self.max)

    # -- completion (lock held) -----------------------------------------------------------

    def release(self) -> None:
        """Give one slot back: to the first waiter if any, else to the pool of free slots.

        While more slots are held than the limit allows (a slot kept by :meth:`pin`, or a
        limit lowered under running calls) a freed slot is not handed on: the waiters wait
        until the count is back under the limit."""
        if self.in_flight <= self.max:
            while self.waiters:
                if self._grant_next():
                    return
        self.in_flight -= 1

    def _grant_next(self) -> bool:
        waiter = self.waiters.popleft()
        if waiter.state != W_WAITING:
            return False
        waiter.state = W_GRANTED
        waiter.wake()
        return True

    def record(self, gen: int, kind: int, duration: float | None) -> None:
        """Count an outcome; act on the state only if ``gen`` is current."""
        self.counts[kind] += 1
        if duration is not None:
            observe_duration(self.counts, duration)
        if kind < IGNORED:
            self.record_window(gen, kind)
        elif gen == self.gen and self.state == HALF_OPEN:
            self.trial_busy = False  # cancelled or ignored trial: the next call may trial

    def record_window(self, gen: int, kind: int, now: float | None = None) -> None:
        """Count an outcome of generation ``gen`` in the window (``now``: the clock's reading,
        if the caller has one) and act on the state; stale outcomes are ignored here."""
        if gen != self.gen:
            return  # stale: lifetime metrics only
        state = self.state
        if state == CLOSED:
            if now is None:
                now = self.clock()
            requests, errors = self.window.tally(now, kind)
            if requests >= self.volume:  # (no shortcut until the volume is reached)
                self.judge(now, requests, errors)
        elif state == HALF_OPEN:
            if kind == SUCCESS:
                self._to_closed("trial_succeeded")
            elif kind != REJECTED:  # failure or timeout of the trial
                now = self.clock()
                self.window.tally(now, kind)
                self._to_open(now, "trial_failed")

    def judge(self, now: float, requests: int, errors: int) -> None:
        """Closed, volume reached (``requests >= volume``): trip if the error percentage is
        met; else successes may skip health until the bucket ends (they only lower it)."""
        if 100 * errors >= self.trip_percent * requests and requests:
            self._to_open(now, "tripped")
        else:
            window = self.window
            window.fast_until = window.end

    def record_fallback(self, ok: bool) -> None:
        self.series.fallbacks[0 if ok else 1] += 1
        self.window.add(self.clock(), FALLBACK_OK if ok else FALLBACK_FAILED)

    # -- slots kept past a call (lock held) ------------------------------------------------------

    def pin(self) -> None:
        """Keep one more slot, taken by a call that still holds its own (so no other call can
        get in between): the httpx transport keeps a response's slot until it is closed.
        Give it back with :meth:`release`."""
        self.in_flight += 1

    # -- retries (lock held) --------------------------------------------------------------------

    def take_retry(self, budget: float | None, per_second: float) -> bool:
        """Grant one retry if the budget allows it: retries over the rolling window may add
        at most ``budget`` times the window's first attempts, plus ``per_second`` per second
        of window (a floor for quiet commands). O(1): the window keeps running totals."""
        if budget is None:
            return True
        now = self.clock()
        window = self.window
        requests, _ = window.health(now)
        retries = window.count(RETRIES)
        first = max(requests - retries, 0)
        if retries + 1 > budget * first + per_second * self.config.rolling_window:
            return False
        window.add(now, RETRIES)
        return True

    def count_retry(self, outcome: int) -> None:
        self.series.retries[outcome] += 1

    def take_events(self) -> list[StateChange] | None:
        """The events queued since the last call (lock held); publish them after release."""
        events = self.events
        if not events:
            return None
        self.events = []
        return events

    # -- transitions --------------------------------------------------------------------------

    def _to_open(self, now: float, reason: str) -> None:
        old = STATES[self.state_index]
        self.state = OPEN
        self.gen += 1
        self.opened_at = now
        self.trial_busy = False
        self._apply()
        self._event(old, CircuitState.OPEN, reason)
        if self.shared is not None:
            self.shared.changed(reason)

    def _to_closed(self, reason: str | None) -> None:
        old = self.state_index
        stats = self.snapshot()
        self.state = CLOSED
        self.gen += 1
        self.trial_busy = False
        self.window.reset()
        self._apply()
        if reason is not None and old != self.state_index:
            self._event(STATES[old], STATES[self.state_index], reason, stats)
        if self.shared is not None:
            self.shared.changed(reason)

    # -- the shared view of a store (lock held; called by resilience._shared_circuit) ---------

    def shared_open(self, until: float) -> None:
        """Another process opened the circuit (or holds its trial): open here too, until
        ``until`` (this clock), without a trip of our own. ``force_closed`` still wins."""
        if self.config.force_closed:
            return
        old = self.state_index
        if self.state != OPEN:
            self.state = OPEN
            self.gen += 1  # our own trial, if any, is stale now
            self.trial_busy = False
        self.opened_at = until - self.config.sleep_window
        self._apply()
        if self.state_index != old:
            self._event(STATES[old], CircuitState.OPEN, "shared_open")

    def shared_close(self) -> None:
        """A trial elsewhere succeeded: closed here too, rolling window reset."""
        if self.state != CLOSED:
            self._to_closed("shared_closed")

    def _event(
        self, old: str, new: str, reason: str, stats: CircuitStatistics | None = None
    ) -> None:
        self.events.append(
            StateChange(
                command=self.name, old=str(old), new=str(new), reason=reason,
                statistics=stats or self.snapshot(),
            )
        )


def publish(core: CircuitCore, events: list[StateChange]) -> None:
    """Deliver events taken with ``take_events`` (no lock held)."""
    cfg = core.config
    for event in events:
        core.bus.publish(event, (cfg.request_volume_threshold, cfg.error_percent_threshold))
