"""Events: what happened to a circuit, delivered to subscribers and to the log.

Subscribers are called synchronously, once per event, after the state change is complete
and outside every lock, in the thread or task that caused it. An exception in a subscriber
is logged on ``resilience.events`` and never reaches the call, nor stops delivery to the
other subscribers. Every circuit transition is also logged on ``resilience.circuit``
(WARNING when a circuit opens, INFO otherwise).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._rolling import CircuitStatistics

__all__ = ["Event", "EventBus", "RetryScheduled", "StateChange"]

_events_log = logging.getLogger("resilience.events")
_circuit_log = logging.getLogger("resilience.circuit")


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """A circuit changed state. ``reason`` is one of ``"tripped"``, ``"trial"``,
    ``"trial_succeeded"``, ``"trial_failed"``, ``"forced_open"``, ``"forced_closed"``,
    ``"unforced"``, ``"flush"``, and with a shared store ``"shared_open"`` / ``"shared_closed"``
    (another process opened the circuit, or closed it with a successful trial);
    ``statistics`` is the rolling window at that moment."""

    command: str
    old: str
    new: str
    statistics: CircuitStatistics
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled:
    """A failed attempt of ``command`` will be retried after ``delay`` seconds."""

    command: str
    attempt: int
    delay: float
    error: BaseException


Event = StateChange | RetryScheduled


class EventBus:
    """The subscribers of one registry. ``subscribers`` is a tuple, replaced on change, so
    delivery iterates a stable snapshot without a lock (and an empty tuple costs nothing)."""

    __slots__ = ("_lock", "subscribers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.subscribers: tuple[Callable[[Any], object], ...] = ()

    def subscribe(self, callback: Callable[[Any], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes."""
        if not callable(callback):
            raise TypeError(f"subscribe() needs a callable, got {callback!r}")
        token = _Subscription(callback)
        with self._lock:
            self.subscribers = (*self.subscribers, token)

        def unsubscribe() -> None:
            with self._lock:
                self.subscribers = tuple(s for s in self.subscribers if s is not token)

        return unsubscribe

    def publish(self, event: Event, thresholds: tuple[int, float] | None = None) -> None:
        """Log ``event`` (``thresholds``: the volume and error percentage that tripped it)
        and hand it to every subscriber."""
        if isinstance(event, StateChange):
            _log_transition(event, thresholds)
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception:
                _events_log.exception("resilience: event subscriber %r failed", subscriber)


class _Subscription:
    """One subscription (so subscribing the same callback twice gives two deliveries)."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[Any], object]) -> None:
        self.callback = callback

    def __call__(self, event: Event) -> None:
        self.callback(event)

    def __repr__(self) -> str:
        return repr(self.callback)


def _log_transition(event: StateChange, thresholds: tuple[int, float] | None) -> None:
    s = event.statistics
    if event.new == "open":
        volume, percent = thresholds or (0, 0.0)
        _circuit_log.warning(
            "circuit %r opened (%s): %.1f%% errors over %d requests "
            "(thresholds: %g%% errors, at least %d requests)",
            event.command, event.reason, s.error_percent, s.requests, percent, volume,
        )
    else:
        _circuit_log.info(
            "circuit %r %s -> %s (%s)", event.command, event.old, event.new, event.reason
        )
