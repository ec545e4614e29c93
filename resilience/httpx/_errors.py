"""The httpx transports' errors, and the slot a response keeps until it is closed.

A refusal or a timeout of the command is raised as a class that is both the resilience error
and the matching httpx error, so that code written for either catches it:

* :class:`HTTPCircuitOpenError` -- ``CircuitOpenError`` and ``httpx.TransportError``;
* :class:`HTTPMaxConcurrencyError` -- ``MaxConcurrencyError`` and ``httpx.TransportError``;
* :class:`HTTPCommandTimeoutError` -- ``CommandTimeoutError`` (so also the builtin
  ``TimeoutError``) and ``httpx.TimeoutException``.

Each carries ``.request`` and the original error's fields, and is chained ``from`` it.

:class:`Slot`, :class:`AsyncSlotStream` and :class:`SyncSlotStream`: the concurrency slot a
response keeps (``CircuitCore.pin``) is given back exactly once, when the response is closed,
or when reading its body fails.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from .._errors import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError
from .._rolling import CircuitStatistics

if TYPE_CHECKING:
    from .._circuit import CircuitCore

__all__ = [
    "HTTP_ERRORS",
    "REFUSALS",
    "AsyncSlotStream",
    "HTTPCircuitOpenError",
    "HTTPCommandTimeoutError",
    "HTTPMaxConcurrencyError",
    "Slot",
    "SyncSlotStream",
    "http_error",
]


class HTTPCircuitOpenError(CircuitOpenError, httpx.TransportError):
    """The host's circuit is open: the request was not sent.

    Both a ``resilience.CircuitOpenError`` (``command``, ``retry_after``, ``statistics``)
    and an ``httpx.TransportError`` (``request``)."""

    def __init__(
        self,
        command: str,
        *,
        retry_after: float | None,
        statistics: CircuitStatistics,
        request: httpx.Request,
    ) -> None:
        CircuitOpenError.__init__(self, command, retry_after=retry_after, statistics=statistics)
        self.request = request

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.command, self.request, {
            "retry_after": self.retry_after, "statistics": self.statistics}))


class HTTPMaxConcurrencyError(MaxConcurrencyError, httpx.TransportError):
    """All of the host's concurrency slots are taken (responses not yet closed included):
    the request was not sent.

    Both a ``resilience.MaxConcurrencyError`` (``command``, ``limit``) and an
    ``httpx.TransportError`` (``request``)."""

    def __init__(self, command: str, *, limit: int, request: httpx.Request) -> None:
        MaxConcurrencyError.__init__(self, command, limit=limit)
        self.request = request

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.command, self.request, {"limit": self.limit}))


class HTTPCommandTimeoutError(CommandTimeoutError, httpx.TimeoutException):
    """No response headers within the command's ``timeout``.

    Both a ``resilience.CommandTimeoutError`` (``command``, ``timeout``; also the builtin
    ``TimeoutError``) and an ``httpx.TimeoutException`` (``request``)."""

    def __init__(self, command: str, *, timeout: float, request: httpx.Request) -> None:
        CommandTimeoutError.__init__(self, command, timeout=timeout)
        self.request = request

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.command, self.request, {"timeout": self.timeout}))


def _rebuild(cls: type[Any], command: str, request: httpx.Request, fields: dict[str, Any]) -> Any:
    return cls(command, request=request, **fields)


#: What the transports convert, and what they convert it to.
REFUSALS = (CircuitOpenError, MaxConcurrencyError, CommandTimeoutError)
HTTP_ERRORS = (HTTPCircuitOpenError, HTTPMaxConcurrencyError, HTTPCommandTimeoutError)


def http_error(error: Exception, request: httpx.Request) -> Exception:
    """The HTTP flavour of a command's refusal or timeout (chained to it); anything else as is."""
    new: Exception
    if isinstance(error, HTTP_ERRORS) or not isinstance(error, REFUSALS):
        return error
    if isinstance(error, CircuitOpenError):
        new = HTTPCircuitOpenError(
            error.command, retry_after=error.retry_after, statistics=error.statistics,
            request=request,
        )
    elif isinstance(error, MaxConcurrencyError):
        new = HTTPMaxConcurrencyError(error.command, limit=error.limit, request=request)
    else:
        new = HTTPCommandTimeoutError(error.command, timeout=error.timeout, request=request)
    new.__cause__ = error  # as ``raise new from error`` would
    return new


# -- the slot of a response ---------------------------------------------------------------------


class Slot:
    """One more concurrency slot of ``core``, taken while the call that sends the request
    still holds its own (``CircuitCore.pin``), given back once by :meth:`release`."""

    __slots__ = ("_core", "_held")

    def __init__(self, core: CircuitCore) -> None:
        self._core = core
        self._held = False
        core.lock.run(self._pin)

    def _pin(self) -> None:  # (lock held)
        self._core.pin(); self._held = True  # noqa: E702  (one line: nothing lands between)

    def _give(self) -> None:  # (lock held)
        if self._held:
            self._core.release(); self._held = False  # noqa: E702

    def release(self) -> None:
        """Give the slot back (idempotent, from any thread)."""
        if self._held:
            self._core.lock.run(self._give)

    @property
    def held(self) -> bool:
        return self._held


class AsyncSlotStream(httpx.AsyncByteStream):
    """A response body that gives its slot back when it is closed (or reading it fails)."""

    def __init__(self, stream: httpx.AsyncByteStream, slot: Slot) -> None:
        self._stream = stream
        self.slot = slot
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # (an iterator object, not an async generator: asyncio tracks every async generator
        # in a WeakSet, which costs more than the rest of this wrapper)
        return _Reading(self, self._stream.__aiter__())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.aclose()
        finally:
            self.slot.release()


class _Reading:
    """Reading an :class:`AsyncSlotStream`: a chunk at a time; an error closes the stream."""

    __slots__ = ("_chunks", "_stream")

    def __init__(self, stream: AsyncSlotStream, chunks: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._chunks = chunks

    def __aiter__(self) -> _Reading:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except Exception:
            await self._stream.aclose()
            raise


class SyncSlotStream(httpx.SyncByteStream):
    """:class:`AsyncSlotStream` for sync transports (closing is safe from any thread)."""

    def __init__(self, stream: httpx.SyncByteStream, slot: Slot) -> None:
        self._stream = stream
        self.slot = slot
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._stream.close()
        finally:
            self.slot.release()
