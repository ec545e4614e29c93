"""The whole exception tree, in one place.

``ResilienceError`` is the base of everything this library raises on its own account.
Errors from a command carry ``.command``; errors from a pool carry ``.pool``.
Exceptions raised by *your* functions are never wrapped: they reach you unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ._circuit import CircuitStatistics

__all__ = [
    "CircuitOpenError",
    "CommandError",
    "CommandTimeoutError",
    "MaxConcurrencyError",
    "PoolClosedError",
    "PoolError",
    "PoolFullError",
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

    def __init__(
        self,
        command: str,
        *,
        retry_after: float | None,
        statistics: CircuitStatistics,
    ) -> None:
        detail = "forced open" if retry_after is None else f"retry after {retry_after:.3f}s"
        super().__init__(
            f"circuit of command {command!r} is open ({detail}; "
            f"error rate {statistics.error_percent:.1f}% over {statistics.requests} requests)",
            command=command,
        )
        self.retry_after = retry_after
        self.statistics = statistics


class MaxConcurrencyError(CommandError):
    """All ``max_concurrent_requests`` slots of the command are taken; rejected at once."""

    def __init__(self, command: str, *, limit: int) -> None:
        super().__init__(
            f"command {command!r} rejected: {limit} concurrent executions already in flight",
            command=command,
        )
        self.limit = limit


class CommandTimeoutError(CommandError, TimeoutError):
    """The execution did not finish within the command's ``timeout``."""

    def __init__(self, command: str, *, timeout: float) -> None:
        super().__init__(f"command {command!r} timed out after {timeout}s", command=command)
        self.timeout = timeout


class PoolError(ResilienceError):
    """A worker pool refused a job; ``.pool`` is the pool's name."""

    def __init__(self, message: str, *, pool: str) -> None:
        super().__init__(message)
        self.pool = pool


class PoolClosedError(PoolError):
    """The pool is closed (or closing): the job was not accepted, or was dropped/cancelled."""


class PoolFullError(PoolError, anyio.WouldBlock):
    """``submit_nowait`` found the queue full."""
