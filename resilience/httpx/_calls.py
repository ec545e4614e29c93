"""The per-request state of the httpx transports, and the retry events that close responses.

* :class:`AsyncCall` -- one request through ``AsyncCommandTransport``: whether it may be
  retried, the responses it produced that are not closed yet, the wrapped transport's own error.
* :class:`SyncCall` -- one *attempt* of a request through ``CommandTransport`` (a retry starts a
  new one): ``hand`` (the sending thread) and ``abandon`` (the caller) meet under its lock.
* :func:`watch` subscribes :func:`on_event` to a registry once: a ``RetryScheduled`` event is
  published exactly when a retry is decided, in the caller's task or thread, before the next
  attempt is admitted; the failed response being retried gives its slot back then.

The transports set the state in ``CURRENT`` (``_policy``) around each call.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import anyio
import httpx

from .._circuit import CircuitCore
from .._errors import FailedResultError
from .._events import RetryScheduled
from .._registry import Registry
from ._errors import AsyncSlotStream
from ._policy import CURRENT

__all__ = ["AsyncCall", "SyncCall", "close_quietly", "watch"]


class AsyncCall:
    """One request through the async transport: its command, whether it may be retried, the
    responses it produced that are not closed yet, and the transport's own error, if any."""

    __slots__ = ("core", "name", "open", "raised", "request", "retryable")

    def __init__(self, name: str, core: CircuitCore, request: httpx.Request, ok: bool) -> None:
        self.name = name
        self.core = core
        self.request = request
        self.retryable = ok
        self.open: list[httpx.Response] = []
        self.raised: BaseException | None = None

    def retrying(self, error: BaseException) -> None:
        """A retry was decided (the caller's task): give the failed response's slot back now,
        so the next attempt can be admitted; it is closed before that attempt is sent."""
        if isinstance(error, FailedResultError):
            for response in self.open:
                if response is error.result and isinstance(response.stream, AsyncSlotStream):
                    response.stream.slot.release()

    async def close(self, keep: httpx.Response | None = None) -> None:
        """Close every response of this request but ``keep`` (shielded: also on cancel)."""
        responses, self.open = self.open, []
        with anyio.CancelScope(shield=True):
            for response in responses:
                if response is not keep:
                    with contextlib.suppress(Exception):
                        await response.aclose()


class SyncCall:
    """One attempt of a request through the sync transport (a retry starts a new one).

    ``hand`` (the sending thread) and ``abandon`` (the caller) meet under ``lock``: a response
    is handed to the caller unless it gave up, and a caller that gives up closes a response
    already handed; otherwise the thread closes it when it arrives."""

    __slots__ = ("abandoned", "core", "lock", "name", "raised", "request", "response",
                 "retryable")

    def __init__(self, name: str, core: CircuitCore, request: httpx.Request, ok: bool) -> None:
        self.name = name
        self.core = core
        self.request = request
        self.retryable = ok
        self.raised: BaseException | None = None
        self.lock = threading.Lock()
        self.abandoned = False
        self.response: httpx.Response | None = None

    def hand(self, response: httpx.Response) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.response = response
            return True

    def abandon(self, keep: httpx.Response | None = None) -> None:
        with self.lock:
            self.abandoned = True
            response, self.response = self.response, None
        if response is not None and response is not keep:
            close_quietly(response)

    def retrying(self, error: BaseException) -> SyncCall:
        """A retry was decided (the caller's thread): this attempt is over; the next one
        gets a state of its own (a thread still running this one finds it abandoned)."""
        self.abandon()
        return SyncCall(self.name, self.core, self.request, self.retryable)


def close_quietly(response: httpx.Response) -> None:
    with contextlib.suppress(Exception):
        response.close()


def on_event(event: object) -> None:
    """The transports' subscriber: close a failed response that is about to be retried."""
    if type(event) is RetryScheduled:
        call = CURRENT.get(None)
        if call is not None and event.command == call.name:
            new = call.retrying(event.error)
            if new is not None:
                CURRENT.set(new)


_WATCHED: weakref.WeakSet[Registry] = weakref.WeakSet()
_WATCH_LOCK = threading.Lock()


def watch(registry: Registry) -> None:
    """Subscribe :func:`on_event` to ``registry`` once (a registry without retry policies
    never publishes a ``RetryScheduled``, so this costs nothing there)."""
    with _WATCH_LOCK:
        if registry not in _WATCHED:
            registry.subscribe(on_event)
            _WATCHED.add(registry)
