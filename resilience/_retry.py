"""The retry policy of a command: how many attempts, how long between them, which failures.

``Retry`` only describes; the runners (``_command``, ``_command_sync``) run the attempts, each
a full pass through the command, and ``CircuitCore`` keeps the budget in the rolling window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._validate import (
    MAX_SECONDS,
    ExceptionMatcher,
    check_finite,
    check_fraction,
    check_int,
    check_seconds,
    exception_matcher,
)

__all__ = ["Retry", "hint_of"]

_random = random.random


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Retry a failed call: ``attempts`` in all, with exponential backoff and jitter.

    The delay after the n-th failed attempt is ``backoff * multiplier ** (n - 1)``, capped at
    ``max_backoff``, then reduced by up to ``jitter`` (a fraction) at random. ``on`` says which
    failures are retried: exception types, or a predicate ``(error) -> bool``; it sees the
    function's exception, a ``CommandTimeoutError`` for a timeout and a ``FailedResultError``
    for a failed result (default: every failure). ``budget`` caps retries at this fraction of
    the command's first attempts over its rolling window (``None``: no budget), never below
    ``min_retries_per_second``.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 5.0
    jitter: float = 0.5
    on: ExceptionMatcher = Exception
    budget: float | None = 0.2
    min_retries_per_second: float = 10.0

    def __post_init__(self) -> None:
        check_int("attempts", self.attempts, 1)
        check_seconds("backoff", self.backoff, minimum=0.0, inclusive=True)
        check_finite("multiplier", self.multiplier, minimum=1.0, inclusive=True)
        check_seconds("max_backoff", self.max_backoff, minimum=0.0, inclusive=True)
        check_fraction("jitter", self.jitter)
        object.__setattr__(self, "on", exception_matcher("on", self.on))
        if self.budget is not None:
            check_finite("budget", self.budget, minimum=0.0, inclusive=True)
        check_finite("min_retries_per_second", self.min_retries_per_second, minimum=0.0,
                     inclusive=True)

    def retries(self, error: Exception) -> bool:
        """Whether ``on`` says to retry ``error`` (a predicate that raises propagates)."""
        on = self.on
        if isinstance(on, tuple):
            return isinstance(error, on)
        return bool(on(error))  # type: ignore[operator]

    def delay(self, attempt: int) -> float:
        """The sleep after failed attempt number ``attempt`` (1 for the first), jittered.

        Any attempt number works: past the cap the delay is ``max_backoff`` (no overflow).
        """
        delay = self.backoff
        if self.multiplier != 1 and delay:
            try:
                delay *= self.multiplier ** (attempt - 1)
            except OverflowError:
                delay = self.max_backoff
        delay = min(delay, self.max_backoff)
        if self.jitter:
            delay *= 1.0 - self.jitter * _random()
        return delay


def hint_of(error: BaseException) -> float | None:
    """The ``retry_after`` hint (seconds) a failure carries, if it is a sane number."""
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and hint == hint:
        return min(max(float(hint), 0.0), MAX_SECONDS)
    return None
