"""What the httpx transports decide about a request or a response, without sending anything.

* :func:`host_name` -- the default command name of a request: ``"http:" + host`` (plus
  ``":port"`` when the URL has an explicit, non-default port).
* :class:`FailedStatuses` -- the command's ``failed_if``: a response whose status is in the
  set is a failed result; its ``retry_after_of`` reads the ``Retry-After`` header, which the
  command turns into the failure's ``retry_after`` hint.
* :class:`RetryGate` -- wraps a retry policy's ``on``: a request that must not be retried (a
  method outside ``retry_methods``, a body that cannot be replayed) says so through a context
  variable that the transport sets around each call; every other failure goes to the user's
  own ``on``.

Importing this module imports httpx (only ``resilience.httpx`` and its modules do).
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from .._validate import ExceptionMatcher

__all__ = [
    "CURRENT",
    "FailedStatuses",
    "RetryGate",
    "Retryable",
    "check_methods",
    "check_statuses",
    "host_name",
    "parse_retry_after",
]

_DELTA = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class Retryable(Protocol):
    """What the gate reads of the request being sent (the transport's per-request state)."""

    retryable: bool


#: The request being sent in this task (or thread), set by the transport around each call.
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("resilience_httpx_request")


def host_name(request: httpx.Request) -> str:
    """``"http:" + host``, plus ``":port"`` when the URL names a non-default port (httpx
    drops default ports: ``http://a:80`` and ``https://a:443`` are both ``"http:a"``)."""
    url = request.url
    host = url.host
    if ":" in host:  # an IPv6 literal: keep it readable next to a port
        host = f"[{host}]"
    port = url.port
    return f"http:{host}" if port is None else f"http:{host}:{port}"


def check_statuses(statuses: object) -> frozenset[int]:
    """``failed_statuses``: an iterable of HTTP status codes (ints in 100..599)."""
    if isinstance(statuses, int | str | bytes) or not isinstance(statuses, Iterable):
        raise TypeError(
            f"failed_statuses must be an iterable of HTTP status codes, e.g. (500, 503), "
            f"got {statuses!r}"
        )
    out = set()
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool):
            raise TypeError(f"failed_statuses must hold ints, got {status!r}")
        if not 100 <= status <= 599:
            raise ValueError(f"failed_statuses: {status!r} is not an HTTP status (100..599)")
        out.add(status)
    return frozenset(out)


def check_methods(methods: object) -> frozenset[str]:
    """``retry_methods``: an iterable of HTTP method names (compared upper-case)."""
    if isinstance(methods, str | bytes) or not isinstance(methods, Iterable):
        raise TypeError(
            f"retry_methods must be an iterable of method names, e.g. ('GET', 'PUT'), "
            f"got {methods!r}"
        )
    out = set()
    for method in methods:
        if not isinstance(method, str):
            raise TypeError(f"retry_methods must hold str method names, got {method!r}")
        if not method or not method.isascii() or not method.isalpha():
            raise ValueError(f"retry_methods: {method!r} is not an HTTP method name")
        out.add(method.upper())
    return frozenset(out)


def parse_retry_after(value: str, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value: delta-seconds (a decimal fraction
    is accepted too) or an HTTP-date (a date in the past gives 0). Anything else: ``None``."""
    value = value.strip()
    if _DELTA.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        seconds = (when - datetime.fromtimestamp(now(), UTC)).total_seconds()
    except (OverflowError, ValueError):
        return None
    return max(seconds, 0.0)


class FailedStatuses:
    """The ``failed_if`` of an httpx transport's commands: a response whose status is in
    ``statuses`` (or that the user's own ``failed_if`` marks) is a failed result."""

    __slots__ = ("predicate", "statuses")

    def __init__(
        self, statuses: frozenset[int], predicate: Callable[[Any], bool] | None = None
    ) -> None:
        self.statuses = statuses
        self.predicate = predicate

    def __call__(self, response: httpx.Response) -> bool:
        if response.status_code in self.statuses:
            return True
        predicate = self.predicate
        return predicate is not None and bool(predicate(response))

    def retry_after_of(self, response: httpx.Response) -> float | None:
        """The ``Retry-After`` of a failed response, in seconds (``None``: none, or garbage)."""
        value = response.headers.get("retry-after")
        return None if value is None else parse_retry_after(value)

    def __repr__(self) -> str:
        extra = "" if self.predicate is None else f", or {self.predicate!r}"
        return f"<failed statuses {sorted(self.statuses)}{extra}>"


class RetryGate:
    """A retry policy's ``on``, gated per request: a request that must not be retried (its
    method, or a body that cannot be replayed) is never retried; other failures are retried
    when the user's ``on`` says so. The retry loop runs in the caller's task or thread, where
    the transport's context variable is set, so the gate sees the request's own verdict."""

    __slots__ = ("on",)

    def __init__(self, on: ExceptionMatcher) -> None:
        self.on = on

    def __call__(self, error: Exception) -> bool:
        call: Retryable | None = CURRENT.get(None)
        if call is not None and not call.retryable:
            return False
        on: Any = self.on
        if isinstance(on, tuple):
            return isinstance(error, on)
        return bool(on(error))

    def __repr__(self) -> str:
        return f"<retried per request (idempotent, replayable), then {self.on!r}>"
