"""Commands by name: configuration, circuits, events, the decorator, ``run`` and ``run_sync``.

A module-level default registry backs ``resilience.command``, ``resilience.run`` and friends;
``Registry(metrics_registry=..., clock=..., store=...)`` gives an isolated one (tests,
multi-tenant apps; ``store``: circuits shared across processes, ``resilience._shared_circuit``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar, TypeVarTuple, overload

from prometheus_client import CollectorRegistry

from ._circuit import CircuitCore, publish, timer
from ._circuit_view import Circuit
from ._command import coroutine_caller
from ._command_sync import call_async, call_sync
from ._config import CommandConfig
from ._decorate import CommandDecorator, check_fallback, is_async_callable
from ._errors import ConfigurationWarning
from ._events import Event, EventBus
from ._exporter import Hub
from ._names import check_name
from ._shared_circuit import attach_circuit
from ._store import StoreCore

__all__ = ["Registry", "core_of"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
_Caller = Callable[..., Coroutine[Any, Any, Any]]

#: ``run()`` keeps at most this many cached callers per command name (oldest dropped first),
#: so a program that builds a new callable per call stays bounded, and one that uses many
#: names pays nothing extra: the cache is per name, never cleared as a whole.
CALLERS_PER_NAME = 16


class Registry:
    """An isolated set of commands, exporting to one prometheus-client registry.

    ``metrics_registry`` defaults to prometheus-client's default registry; ``clock`` is a
    zero-argument callable returning monotonic seconds that drives sleep windows, the rolling
    window, ``retry_after`` and recorded durations (timeouts always use the event loop's or
    the thread's real time). ``store`` (a ``resilience.redis.RedisStore``) shares every
    circuit's state with the other processes using the same store (see docs/shared-state.md).
    """

    def __init__(
        self,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = None,
        store: StoreCore | None = None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {clock!r}")
        if metrics_registry is not None and not isinstance(metrics_registry, CollectorRegistry):
            raise TypeError(
                f"metrics_registry must be a prometheus_client CollectorRegistry or None, "
                f"got {metrics_registry!r}"
            )
        if store is not None and not isinstance(store, StoreCore):
            raise TypeError(f"store must be a resilience.redis.RedisStore or None, got {store!r}")
        self._store = store
        self._hub = Hub.of(metrics_registry)
        self._clock: Callable[[], float] = clock or timer
        self._bus = EventBus()
        self._cores: dict[str, CircuitCore] = {}
        self._views: dict[str, Circuit] = {}
        # run()'s callers: name -> id(fn) -> (fn, fallback, caller); entries keep fn and
        # fallback alive, so an id is never reused while cached, and are checked by identity
        self._callers: dict[str, dict[int, tuple[Any, Any, _Caller]]] = {}
        # ...and the one used last, per name: most call sites run one function per name, and
        # one look-up of one tuple is what a call at 10,000 names can afford (each object it
        # touches is a cache miss there)
        self._recent: dict[str, tuple[Any, Any, _Caller]] = {}
        self._decorated: dict[str, dict[str, Any]] = {}  # fields set by decorators, by name
        self._checked: dict[int, Any] = {}  # run_sync fallbacks whose signature was checked
        self._lock = threading.Lock()

    # -- commands ------------------------------------------------------------------------------

    def _core(self, name: str) -> CircuitCore:
        core = self._cores.get(name) if type(name) is str else None
        if core is None:
            name = check_name(name, "command")
            with self._lock:
                core = self._cores.get(name)
                if core is None:
                    series = self._hub.command(name)
                    core = CircuitCore(name, CommandConfig(), series, self._clock, self._bus)
                    if self._store is not None:
                        attach_circuit(self._store, core)
                    self._cores[name] = core
                    self._views[name] = Circuit(core)
                    self._callers[name] = {}
        return core

    def get_circuit(self, name: str) -> Circuit:
        """The circuit of ``name`` (created closed and empty if never used)."""
        view = self._views.get(name) if type(name) is str else None
        if view is None:
            self._core(name)
            view = self._views[name]
        return view

    def configure_command(
        self, name: str, config: CommandConfig | None = None, /, **changes: Any
    ) -> CommandConfig:
        """Set ``name``'s configuration and return it.

        Keywords change only the fields given; a ``CommandConfig`` replaces the whole config.
        Takes effect for the next call; circuit state and statistics are kept.
        """
        check_name(name, "command")
        if config is not None:
            if changes:
                raise TypeError("pass either a CommandConfig or keyword changes, not both")
            if not isinstance(config, CommandConfig):
                raise TypeError(f"config must be a CommandConfig, got {config!r}")
            new = config
            self._set(name, lambda old: new)
            return new
        CommandConfig().replace(**changes)  # validate before touching the registry
        return self._set(name, lambda old: old.replace(**changes))

    def _set(self, name: str, change: Callable[[CommandConfig], CommandConfig]) -> CommandConfig:
        core = self._core(name)
        with core.lock:
            new = change(core.config)
            core.configure(new)
            events = core.take_events()
        if events:
            publish(core, events)
        return new

    def configure(self, configs: Mapping[str, CommandConfig]) -> None:
        """Replace the configuration of several commands at once (all checked first)."""
        if not isinstance(configs, Mapping):
            raise TypeError(
                f"configure() takes a mapping of name -> CommandConfig, got {configs!r}"
            )
        for name, config in configs.items():
            check_name(name, "command")
            if not isinstance(config, CommandConfig):
                raise TypeError(
                    f"config of command {name!r} must be a CommandConfig, got {config!r}"
                )
        for name, config in configs.items():
            self.configure_command(name, config)

    def flush(self) -> None:
        """Forget every circuit's state and rolling statistics (configurations stay)."""
        for core in list(self._cores.values()):
            with core.lock:
                core.flush()
                events = core.take_events()
            if events:
                publish(core, events)

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of this registry's commands.

        Returns a function that unsubscribes. Callbacks run synchronously in the thread or
        task that caused the event, outside every lock: keep them quick and thread-safe.
        """
        return self._bus.subscribe(callback)

    # -- decorating and running ------------------------------------------------------------------

    def command(
        self, name: str, *, fallback: Callable[[Exception], Any] | None = None, **config: Any
    ) -> CommandDecorator:
        """Decorate an ``async def`` or a plain ``def`` so every call goes through ``name``.

        Keyword arguments other than ``fallback`` configure the command, exactly like
        ``configure_command(name, **config)`` at decoration time.
        """
        name = check_name(name, "command")
        check_fallback(fallback, f"@command({name!r})")
        if config:
            self.configure_command(name, **config)
            self._warn_conflicts(name, config)
        return CommandDecorator(self._core(name), fallback)

    def _warn_conflicts(self, name: str, given: dict[str, Any]) -> None:
        normal = CommandConfig().replace(**given)  # compare values as stored, not as spelled
        config = {f: getattr(normal, f) for f in given}
        with self._lock:
            earlier = self._decorated.setdefault(name, {})
            clash = sorted(f for f, v in config.items() if f in earlier and earlier[f] != v)
            before = {f: earlier[f] for f in clash}
            earlier.update(config)
        if clash:
            detail = ", ".join(f"{f}={before[f]!r} -> {config[f]!r}" for f in clash)
            warnings.warn(
                f"command {name!r} is decorated more than once with different settings "
                f"({detail}); all its call sites share one configuration, the last one wins. "
                "Use different names, or configure it in one place (configure_command)",
                ConfigurationWarning,
                stacklevel=3,
            )

    @overload
    def run(
        self,
        name: str,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        fallback: Callable[[Exception], T | Awaitable[T]] | None = None,
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def run(
        self,
        name: str,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        fallback: Callable[[Exception], T | Awaitable[T]] | None = None,
    ) -> Coroutine[Any, Any, T]: ...

    def run(
        self,
        name: str,
        fn: Callable[[*Ts], Any],
        *args: *Ts,
        fallback: Callable[[Exception], Any] | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """``await run(name, fn, *args)``: call ``fn(*args)`` through command ``name``.

        Use ``functools.partial`` for keyword arguments. Coroutine functions run in this task;
        any other callable runs in a worker thread (an awaitable it returns is awaited here,
        under the same deadline). Returns the call's coroutine, so awaiting it costs one frame.
        """
        try:
            fn_, fallback_, caller = self._recent[name]
            if fn_ is fn and fallback_ is fallback:
                return caller(*args)
        except (KeyError, TypeError):  # first call for this name, or an unhashable name
            pass
        return self._caller(name, fn, fallback)(*args)

    def _caller(self, name: str, fn: Any, fallback: Any) -> _Caller:
        """``run``'s caller for ``(name, fn, fallback)``, cached by identity, bounded per name;
        it becomes the name's most recent one."""
        core = self._core(name)  # (validates the name)
        try:
            fn_, fallback_, caller = self._callers[core.name][id(fn)]
            if fn_ is not fn or fallback_ is not fallback:
                raise KeyError(name)
        except KeyError:
            caller = self._new_caller(core, fn, fallback)
        self._recent[core.name] = (fn, fallback, caller)
        return caller

    def _new_caller(self, core: CircuitCore, fn: Any, fallback: Any) -> _Caller:
        check_fallback(fallback, f"run({core.name!r})")
        if is_async_callable(fn):
            caller = coroutine_caller(core, fn, fallback)
        elif callable(fn):

            def caller(*args: Any) -> Coroutine[Any, Any, Any]:
                return call_async(core, fn, args, {}, fallback)

        else:
            raise TypeError(f"command {core.name!r}: fn must be callable, got {fn!r}")
        cache = self._callers[core.name]
        if len(cache) >= CALLERS_PER_NAME:
            cache.pop(next(iter(cache)), None)  # the oldest entry
        cache[id(fn)] = (fn, fallback, caller)
        return caller

    def run_sync(
        self,
        name: str,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        fallback: Callable[[Exception], T] | None = None,
    ) -> T:
        """Call the plain function ``fn(*args)`` through command ``name`` from sync code.

        With ``timeout=None`` it runs in this thread; with a timeout, in a worker thread.
        """
        core = self._cores.get(name) if type(name) is str else None
        if core is None:
            core = self._core(name)
        if not callable(fn):
            raise TypeError(f"command {core.name!r}: fn must be callable, got {fn!r}")
        if fallback is not None and fallback is not self._checked.get(id(fallback)):
            check_fallback(fallback, f"run_sync({core.name!r})")
            if len(self._checked) >= CALLERS_PER_NAME * 16:
                self._checked.pop(next(iter(self._checked)), None)
            self._checked[id(fallback)] = fallback  # kept alive: its id is not reused
        result: T = call_sync(core, fn, args, {}, fallback)
        return result


default_registry = Registry()


def core_of(registry: Registry, name: str) -> CircuitCore:
    """The state of command ``name`` (created if new), for the package's integrations
    (``resilience.httpx`` keeps a response's slot until the response is closed)."""
    return registry._core(name)
