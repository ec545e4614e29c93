"""The whole exception tree, in one place.

``ResilienceError`` is the base of everything this library raises on its own account.
Errors from a command carry ``.command``; errors from a pool carry ``.pool``.
Exceptions raised by *your* functions are never wrapped: they reach you unchanged.
"""

from __future__ import annotations

from typing import Any

import anyio

from ._rolling import CircuitStatistics, statistics_between

__all__ = [
    "CircuitOpenError",
    "CommandError",
    "CommandTimeoutError",
    "ConfigurationWarning",
    "FailedResultError",
    "MaxConcurrencyError",
    "PoolClosedError",
    "PoolError",
    "PoolFullError",
    "RateLimitedError",
    "ResilienceError",
]


class ResilienceError(Exception):
    """Base class of every error raised by resilience itself."""


class CommandError(ResilienceError):
    """A command refused or gave up on a call; ``.command`` is the command's name."""

    def __init__(self, message: str, *, command: str) -> None:
        super().__init__(message)
        self.command = command


class CircuitOpenError(CommandError):
    """The circuit is open: the call was short-circuited and the function not called.

    ``retry_after`` is the number of seconds until a trial call may run (``None`` while the
    circuit is forced open); ``statistics`` is the rolling-window snapshot that explains why.
    """

    # Raised on the fast-fail path: one slot holds (command, retry_after, statistics), where
    # statistics may still be the frozen window, a (cum, base) pair: the snapshot and the
    # message are built only when somebody looks.
    __slots__ = ("_info",)

    def __init__(
        self,
        command: str,
        *,
        retry_after: float | None,
        statistics: CircuitStatistics,
    ) -> None:
        Exception.__init__(self, command)
        self._info: tuple[str, float | None, Any] = (command, retry_after, statistics)

    @property
    def command(self) -> str:  # type: ignore[override]
        return self._info[0]

    @property
    def retry_after(self) -> float | None:
        return self._info[1]

    @property
    def statistics(self) -> CircuitStatistics:
        command, retry_after, stats = self._info
        if isinstance(stats, tuple):
            stats = statistics_between(*stats)
            self._info = (command, retry_after, stats)
        return stats  # type: ignore[no-any-return]

    def __str__(self) -> str:
        after = self.retry_after
        detail = "forced open" if after is None else f"retry after {after:.3f}s"
        stats = self.statistics
        return (
            f"circuit of command {self.command!r} is open ({detail}; "
            f"error rate {stats.error_percent:.1f}% over {stats.requests} requests)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_open, (type(self), self.command, self.retry_after, self.statistics))


def circuit_open(
    command: str, retry_after: float | None, frozen: tuple[list[int], list[int]]
) -> CircuitOpenError:
    """A ``CircuitOpenError`` built for the fast-fail path: no ``__init__``, no message and
    no statistics snapshot until somebody reads them."""
    exc = Exception.__new__(CircuitOpenError, command)
    exc._info = (command, retry_after, frozen)
    return exc


def _rebuild_open(
    cls: type[CircuitOpenError],
    command: str,
    retry_after: float | None,
    statistics: CircuitStatistics,
) -> CircuitOpenError:
    return cls(command, retry_after=retry_after, statistics=statistics)


class MaxConcurrencyError(CommandError):
    """All ``max_concurrent_requests`` slots of the command are taken; rejected at once."""

    def __init__(self, command: str, *, limit: int) -> None:
        super().__init__(
            f"command {command!r} rejected: {limit} concurrent executions already in flight",
            command=command,
        )
        self.limit = limit


class FailedResultError(CommandError):
    """The function returned a value that the command's ``failed_if`` marks as a failure.

    Handed to the fallback; ``result`` is the value. ``retry_after`` is a hint (seconds)
    that the result carried, e.g. an HTTP ``Retry-After`` header, or ``None``.
    """

    def __init__(self, command: str, *, result: Any, retry_after: float | None = None) -> None:
        super().__init__(
            f"command {command!r}: the result {result!r:.200} is a failure (failed_if)",
            command=command,
        )
        self.result = result
        self.retry_after = retry_after


class CommandTimeoutError(CommandError, TimeoutError):
    """The execution did not finish within the command's ``timeout``."""

    def __init__(self, command: str, *, timeout: float) -> None:
        super().__init__(f"command {command!r} timed out after {timeout}s", command=command)
        self.timeout = timeout


class RateLimitedError(ResilienceError):
    """A rate limiter has no permit for this call within its ``max_wait``.

    ``limiter`` is the limiter's name; ``retry_after`` the seconds until a permit is free.
    """

    def __init__(self, limiter: str, *, retry_after: float) -> None:
        super().__init__(
            f"rate limiter {limiter!r}: no permit available, retry after {retry_after:.3f}s"
        )
        self.limiter = limiter
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_limited, (self.limiter, self.retry_after))


def _rebuild_limited(limiter: str, retry_after: float) -> RateLimitedError:
    return RateLimitedError(limiter, retry_after=retry_after)


class PoolError(ResilienceError):
    """A worker pool refused a job; ``.pool`` is the pool's name."""

    def __init__(self, message: str, *, pool: str) -> None:
        super().__init__(message)
        self.pool = pool


class PoolClosedError(PoolError):
    """The pool is closed (or closing): the job was not accepted, or was dropped/cancelled."""


class PoolFullError(PoolError, anyio.WouldBlock):
    """``submit_nowait`` found the queue full."""


class ConfigurationWarning(UserWarning):
    """Two places configure one command differently (e.g. two decorators of one name)."""
