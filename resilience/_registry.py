"""Commands by name: configuration, circuits, the decorator, ``run`` and ``run_sync``.

A module-level default registry backs ``resilience.command``, ``resilience.run`` and friends;
``Registry(metrics_registry=..., clock=...)`` gives an isolated one (tests, multi-tenant apps).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar, overload

from prometheus_client import CollectorRegistry

from ._circuit import Circuit
from ._command import Fallback, call_async, call_sync, coroutine_caller
from ._config import CommandConfig
from ._exporter import Hub

__all__ = ["CommandDecorator", "Registry"]

P = ParamSpec("P")
_MAX_CACHED_CALLERS = 1024
T = TypeVar("T")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"command name must be a non-empty str, got {name!r}")
    return name


def _check_fallback(fallback: object) -> None:
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable or None, got {fallback!r}")


class Registry:
    """An isolated set of commands, exporting to one prometheus-client registry.

    ``metrics_registry`` defaults to prometheus-client's default registry; ``clock`` is a
    zero-argument callable returning monotonic seconds, driving sleep windows, the rolling
    window and ``retry_after`` (timeouts always use real time).
    """

    def __init__(
        self,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {clock!r}")
        self._hub = Hub.of(metrics_registry)
        self._clock: Callable[[], float] = clock or time.monotonic
        self._circuits: dict[str, Circuit] = {}
        # run()'s callers: name -> fn -> caller without a fallback (two dict lookups, no key
        # tuple on the hot path); (name, fn, fallback) -> caller with one
        self._callers: dict[str, dict[Any, Callable[..., Coroutine[Any, Any, Any]]]] = {}
        self._fallback_callers: dict[
            tuple[str, Any, Any], Callable[..., Coroutine[Any, Any, Any]]
        ] = {}
        self._cached_callers = 0
        self._lock = threading.Lock()

    def get_circuit(self, name: str) -> Circuit:
        """The circuit of ``name`` (created closed and empty if never used)."""
        circuit = self._circuits.get(name)
        if circuit is None:
            _check_name(name)
            with self._lock:
                circuit = self._circuits.get(name)
                if circuit is None:
                    series = self._hub.command(name)
                    circuit = Circuit(name, CommandConfig(), series, self._clock)
                    self._circuits[name] = circuit
        return circuit

    def configure_command(
        self, name: str, config: CommandConfig | None = None, /, **changes: Any
    ) -> CommandConfig:
        """Set ``name``'s configuration and return it.

        Keywords change only the fields given; a ``CommandConfig`` replaces the whole config.
        Takes effect for the next call; circuit state and statistics are kept.
        """
        _check_name(name)
        if config is not None:
            if changes:
                raise TypeError("pass either a CommandConfig or keyword changes, not both")
            if not isinstance(config, CommandConfig):
                raise TypeError(f"config must be a CommandConfig, got {config!r}")
            new = config
        else:
            # Validate before touching the registry, so bad input creates nothing.
            CommandConfig().replace(**changes)
            new = self.get_circuit(name).config.replace(**changes)
        self.get_circuit(name).configure(new)
        return new

    def configure(self, configs: Mapping[str, CommandConfig]) -> None:
        """Replace the configuration of several commands at once (all checked first)."""
        if not isinstance(configs, Mapping):
            raise TypeError(
                f"configure() takes a mapping of name -> CommandConfig, got {configs!r}"
            )
        for name, config in configs.items():
            _check_name(name)
            if not isinstance(config, CommandConfig):
                raise TypeError(
                    f"config of command {name!r} must be a CommandConfig, got {config!r}"
                )
        for name, config in configs.items():
            self.get_circuit(name).configure(config)

    def flush(self) -> None:
        """Forget every circuit's state and rolling statistics (configurations stay)."""
        for circuit in list(self._circuits.values()):
            circuit.flush()

    def command(
        self, name: str, *, fallback: Fallback | None = None, **config: Any
    ) -> CommandDecorator:
        """Decorate an ``async def`` or a plain ``def`` so every call goes through ``name``.

        Keyword arguments other than ``fallback`` configure the command, exactly like
        ``configure_command(name, **config)`` at decoration time.
        """
        _check_name(name)
        _check_fallback(fallback)
        if config:
            self.configure_command(name, **config)
        return CommandDecorator(self.get_circuit(name), fallback)

    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        fallback: Fallback | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """``await run(name, fn, *args)``: call ``fn(*args)`` through command ``name``.

        Use ``functools.partial`` for keyword arguments. Coroutine functions run in this task;
        any other callable runs in a worker thread (an awaitable it returns is awaited here,
        under the same deadline). Returns the call's coroutine, so awaiting it costs one frame.
        """
        try:
            if fallback is None:
                caller = self._callers[name][fn]
            else:
                caller = self._fallback_callers[name, fn, fallback]
        except (KeyError, TypeError):  # first call for this fn, or an unhashable fn
            caller = self._new_caller(name, fn, fallback)
        return caller(*args)

    def _new_caller(
        self, name: str, fn: Callable[..., Any], fallback: Fallback | None
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        """Build (and cache, if ``fn`` is hashable) the caller ``run`` uses."""
        caller = self._caller(name, fn, fallback)
        try:
            hash(fn)
        except TypeError:
            return caller  # an unhashable callable: no caching
        if self._cached_callers >= _MAX_CACHED_CALLERS:
            # e.g. a fresh lambda or partial per call: start over rather than grow
            self._callers.clear()
            self._fallback_callers.clear()
            self._cached_callers = 0
        if fallback is None:
            self._callers.setdefault(name, {})[fn] = caller
        else:
            self._fallback_callers[name, fn, fallback] = caller
        self._cached_callers += 1
        return caller

    def _caller(
        self, name: str, fn: Callable[..., Any], fallback: Fallback | None
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        """The function ``run`` calls for ``(name, fn, fallback)``."""
        circuit = self.get_circuit(name)
        _check_fallback(fallback)
        if inspect.iscoroutinefunction(fn):
            return coroutine_caller(circuit, fn, fallback)
        if not callable(fn):
            raise TypeError(f"command {name!r}: fn must be callable, got {fn!r}")

        def in_thread(*args: Any) -> Coroutine[Any, Any, Any]:
            return call_async(circuit, fn, args, {}, fallback)

        return in_thread

    def run_sync(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        fallback: Callable[[BaseException], T] | None = None,
    ) -> T:
        """Call the plain function ``fn(*args)`` through command ``name`` from sync code."""
        circuit = self._circuits.get(name) or self.get_circuit(name)
        if not callable(fn):
            raise TypeError(f"command {name!r}: fn must be callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"command {name!r}: run_sync() needs a plain function, got the coroutine "
                f"function {fn!r}; use 'await run(...)' from async code"
            )
        result: T = call_sync(circuit, fn, args, {}, fallback)
        return result


class CommandDecorator:
    """What ``command(name)`` returns: applies the command to a function."""

    def __init__(self, circuit: Circuit, fallback: Fallback | None) -> None:
        self._circuit = circuit
        self._fallback = fallback

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        circuit = self._circuit
        fallback = self._fallback
        if inspect.iscoroutinefunction(fn):

            return functools.wraps(fn)(coroutine_caller(circuit, fn, fallback))
        if not callable(fn):
            raise TypeError(f"@command({circuit.name!r}) needs a function, got {fn!r}")
        if fallback is not None and inspect.iscoroutinefunction(fallback):
            raise TypeError(
                f"@command({circuit.name!r}): a plain def needs a plain fallback, "
                f"got the coroutine function {fallback!r}"
            )

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return call_sync(circuit, fn, args, kwargs, fallback)

        return sync_wrapper


default_registry = Registry()
