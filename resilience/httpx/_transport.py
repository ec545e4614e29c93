"""httpx transports that send every request through a command (one per host by default).

How a request goes through its command:

* ``handle_async_request`` / ``handle_request`` name the command (``name=``, or
  ``"http:" + host[:port]``), configure it the first time the transport uses it, and call
  ``registry.run(name, send, request)`` (``run_sync`` for the sync transport) with the
  transport's fallback. A per-request state is set in :data:`CURRENT` around that call: the
  retry loop runs in the caller's task or thread, so the policy's gated ``on``
  (:class:`RetryGate`) and the retry events see it.
* ``send`` calls the wrapped transport and returns the response with its body unread (the
  command's timeout covers the request up to the response headers). Before it returns it pins
  one more slot (``CircuitCore.pin``), which the response's stream gives back when it is
  closed: the slot is held until the response is closed, streamed bodies included.
* The command judges the response with :class:`FailedStatuses`; a failed response that is
  retried is closed first: the transports subscribe to their registry's ``RetryScheduled``
  events, published exactly when a retry is decided, in the caller's task or thread, before the
  next attempt is admitted. (The async transport gives the slot back at once and closes the
  response before the next attempt is sent, or when the call ends.)
* Refusals and timeouts of the command become the ``HTTP*Error`` classes; errors raised by the
  wrapped transport reach the caller unchanged (same object).
* Sync, with a timeout: ``send`` runs in a worker thread, and the caller may give up on it. The
  per-attempt state (:class:`SyncCall`, under its lock) hands a response to the caller, or, if
  the caller gave up, makes the thread close it itself when it returns: its pinned slot then
  comes back, and the thread's own slot when the thread ends.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .._circuit import CircuitCore
from .._config import CommandConfig
from .._decorate import check_fallback
from .._names import check_name
from .._registry import Registry, core_of, default_registry
from .._retry import Retry
from ._calls import AsyncCall, SyncCall, close_quietly, watch
from ._errors import (
    HTTP_ERRORS,
    REFUSALS,
    AsyncSlotStream,
    Slot,
    SyncSlotStream,
    http_error,
)
from ._policy import (
    CURRENT,
    FailedStatuses,
    RetryGate,
    check_methods,
    check_statuses,
    host_name,
)

__all__ = ["AsyncCommandTransport", "CommandTransport"]

DEFAULT_FAILED_STATUSES = (429, 500, 502, 503, 504)
DEFAULT_RETRY_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")

NameRule = str | Callable[[httpx.Request], str] | None


def _gated(policy: Retry) -> Retry:
    if isinstance(policy.on, RetryGate):
        return policy
    return dataclasses.replace(policy, on=RetryGate(policy.on))


# -- what both transports share -----------------------------------------------------------------


class _Commands:
    """Naming, configuration and per-name state shared by both transports."""

    def _setup(
        self,
        name: NameRule,
        registry: Registry | None,
        failed_statuses: object,
        retry_methods: object,
        fallback: object,
        config: dict[str, Any],
    ) -> None:
        where = type(self).__name__
        self._name: str | None = None
        self._name_fn: Callable[[httpx.Request], str] | None = None
        if isinstance(name, str):
            self._name = check_name(name, "command")
        elif callable(name):
            self._name_fn = name
        elif name is not None:
            raise TypeError(
                f"{where}: name must be a str, a callable (request) -> str or None, got {name!r}"
            )
        if registry is None:
            registry = default_registry
        elif not isinstance(registry, Registry):
            raise TypeError(f"{where}: registry must be a resilience.Registry, got {registry!r}")
        self._registry = registry
        statuses = check_statuses(failed_statuses)
        self._methods = check_methods(retry_methods)
        check_fallback(fallback, where)
        CommandConfig().replace(**config)  # TypeError/ValueError naming the field, now
        predicate = config.pop("failed_if", None)
        config["failed_if"] = FailedStatuses(statuses, predicate)
        if config.get("retry") is not None:
            config["retry"] = _gated(config["retry"])
        self._config = config
        self._cores: dict[str, CircuitCore] = {}
        watch(registry)

    def _name_of(self, request: httpx.Request) -> str:
        fn = self._name_fn
        if fn is None:
            return host_name(request)
        name = fn(request)
        if type(name) is not str or name not in self._cores:
            try:
                name = check_name(name, "command")
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"name={fn!r} returned {name!r} for {request!r}: {exc}") from None
        return name

    def _core(self, name: str) -> CircuitCore:
        """The command of ``name``, configured by this transport the first time it is used
        (and its retry policy gated again, should someone have replaced it since)."""
        core = self._cores.get(name)
        if core is None:
            core = self._prepare(name)
        policy = core.retry
        if policy is not None and policy.on.__class__ is not RetryGate:
            self._registry.configure_command(name, retry=_gated(policy))
        return core

    def _prepare(self, name: str) -> CircuitCore:
        registry = self._registry
        name = check_name(name, "command")
        try:
            core = core_of(registry, name)
        except ValueError as exc:  # the distinct-names cap of the metrics
            raise ValueError(
                f"{type(self).__name__}: cannot add a command for {name!r}: {exc}. By default "
                "each host gets its own command: pass name= (a str shared by all requests, or "
                "a callable (request) -> str that groups hosts)"
            ) from exc
        registry.configure_command(name, **self._config)
        self._cores[name] = core
        return core

    def _retryable(self, request: httpx.Request) -> bool:
        """Idempotent (``retry_methods``) and replayable: a body given as bytes (or read
        already) is a ``ByteStream``; a generator or file body is not."""
        return request.method in self._methods and isinstance(request.stream, httpx.ByteStream)

    def __repr__(self) -> str:
        name = self._name if self._name_fn is None else self._name_fn
        inner = getattr(self, "_transport", None)
        return f"<{type(self).__name__} name={name!r} wrapping {inner!r}>"


def _checked(value: object, fallback: object) -> httpx.Response:
    if not isinstance(value, httpx.Response):
        raise TypeError(f"the transport's fallback {fallback!r} must return an httpx.Response, "
                        f"got {value!r}")
    return value


# -- the transports -----------------------------------------------------------------------------


class AsyncCommandTransport(_Commands, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport: every request goes through a command.

    ``name``: one command for all requests (a str), a callable ``(request) -> str``, or
    ``None``: ``"http:" + host`` plus ``":port"`` for an explicit non-default port.
    ``failed_statuses``: responses that are failed results (counted, retried, returned when
    no retry is left). ``retry_methods``: the methods that may be retried (a body that cannot
    be replayed never is). ``fallback(exc)`` returns (or awaits to) an ``httpx.Response``.
    Other keywords are ``CommandConfig`` fields, applied the first time a command is used.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        name: NameRule = None,
        registry: Registry | None = None,
        failed_statuses: tuple[int, ...] | frozenset[int] = DEFAULT_FAILED_STATUSES,
        retry_methods: tuple[str, ...] | frozenset[str] = DEFAULT_RETRY_METHODS,
        fallback: Callable[[Exception], httpx.Response | Awaitable[httpx.Response]] | None = None,
        **config: Any,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"AsyncCommandTransport wraps an httpx.AsyncBaseTransport, "
                            f"got {transport!r}")
        self._setup(name, registry, failed_statuses, retry_methods, fallback, config)
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport
        self._fallback = fallback
        self._send_fn = self._send  # one object: run() caches its caller by identity
        self._fallback_fn = None if fallback is None else self._fall_back

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = self._name if self._name is not None else self._name_of(request)
        core = self._core(name)
        call = AsyncCall(name, core, request, self._retryable(request))
        token = CURRENT.set(call)
        response: httpx.Response | None = None
        try:
            response = await self._registry.run(
                name, self._send_fn, request, fallback=self._fallback_fn
            )
            return response
        except REFUSALS as exc:
            if exc is call.raised or isinstance(exc, HTTP_ERRORS) or exc.command != name:
                raise
            raise http_error(exc, request) from exc
        finally:
            CURRENT.reset(token)
            call.raised = None
            opened = call.open
            if opened and (len(opened) > 1 or opened[0] is not response):
                await call.close(keep=response)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        call: AsyncCall = CURRENT.get()
        if call.open:  # a failed response that is being retried
            await call.close()
        try:
            response = await self._transport.handle_async_request(request)
        except BaseException as exc:
            call.raised = exc
            raise
        if response.is_closed:  # its body is in memory already (e.g. httpx.MockTransport)
            call.open.append(response)
            return response
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError(f"{self._transport!r} returned a response without an async stream")
        slot = Slot(call.core)
        try:
            response.stream = AsyncSlotStream(stream, slot)
            call.open.append(response)
        except BaseException:
            slot.release()
            raise
        return response

    async def _fall_back(self, error: Exception) -> httpx.Response:
        call: AsyncCall = CURRENT.get()
        assert self._fallback is not None
        value = self._fallback(http_error(error, call.request))
        if inspect.isawaitable(value):
            value = await value
        return _checked(value, self._fallback)

    async def aclose(self) -> None:
        await self._transport.aclose()


class CommandTransport(_Commands, httpx.BaseTransport):
    """The same for a sync ``httpx.Client``. With a timeout, each request is sent from a
    worker thread; one that its caller gave up on is closed by the transport when it arrives,
    and keeps its slot until then."""

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        name: NameRule = None,
        registry: Registry | None = None,
        failed_statuses: tuple[int, ...] | frozenset[int] = DEFAULT_FAILED_STATUSES,
        retry_methods: tuple[str, ...] | frozenset[str] = DEFAULT_RETRY_METHODS,
        fallback: Callable[[Exception], httpx.Response] | None = None,
        **config: Any,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"CommandTransport wraps an httpx.BaseTransport, got {transport!r}")
        self._setup(name, registry, failed_statuses, retry_methods, fallback, config)
        self._transport = httpx.HTTPTransport() if transport is None else transport
        self._fallback = fallback
        self._send_fn = self._send
        self._fallback_fn = None if fallback is None else self._fall_back

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        name = self._name if self._name is not None else self._name_of(request)
        core = self._core(name)
        token = CURRENT.set(SyncCall(name, core, request, self._retryable(request)))
        response: httpx.Response | None = None
        try:
            response = self._registry.run_sync(
                name, self._send_fn, request, fallback=self._fallback_fn
            )
            return response
        except REFUSALS as exc:
            call: SyncCall = CURRENT.get()
            if exc is call.raised or isinstance(exc, HTTP_ERRORS) or exc.command != name:
                raise
            raise http_error(exc, request) from exc
        finally:
            last: SyncCall = CURRENT.get()  # (a retry replaces the state: the last attempt's)
            CURRENT.reset(token)
            last.raised = None
            last.abandon(keep=response)

    def _send(self, request: httpx.Request) -> httpx.Response:
        call: SyncCall = CURRENT.get()  # (in a worker thread: the caller's context, copied)
        try:
            response = self._transport.handle_request(request)
        except BaseException as exc:
            call.raised = exc
            raise
        if response.is_closed:  # its body is in memory already (e.g. httpx.MockTransport)
            return response
        stream = response.stream
        if not isinstance(stream, httpx.SyncByteStream):
            raise TypeError(f"{self._transport!r} returned a response without a sync stream")
        slot = Slot(call.core)
        try:
            response.stream = SyncSlotStream(stream, slot)
            handed = call.hand(response)
        except BaseException:
            slot.release()
            raise
        if not handed:  # its caller gave up (timeout): nobody else will close it
            close_quietly(response)
        return response

    def _fall_back(self, error: Exception) -> httpx.Response:
        call: SyncCall = CURRENT.get()
        assert self._fallback is not None
        return _checked(self._fallback(http_error(error, call.request)), self._fallback)

    def close(self) -> None:
        self._transport.close()
