"""What can be decorated (docs/commands.md) and the public surface.

``async def`` functions, methods, ``staticmethod``/``classmethod`` objects in either order and
objects with an ``async def __call__`` stay async; plain functions and methods stay sync;
generator functions are refused; a sync function returning a coroutine is refused at the call
with the coroutine closed; a plain ``def`` with ``timeout=None`` runs in the caller's thread;
the fallback's arity is checked; conflicting decorator settings warn.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import inspect
import threading
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    FakeClock,
    calls_total,
    eventually_sync,
    make_registry,
    ok,
    ok_sync,
)

import resilience
from resilience import ConfigurationWarning

NAME = "decorate"


# -- async things stay async ------------------------------------------------------------------


async def test_async_function_stays_async(reg: resilience.Registry) -> None:
    @reg.command(NAME)
    async def hello(name: str) -> str:
        """Says hello."""
        return f"hello {name}"

    assert inspect.iscoroutinefunction(hello)
    assert hello.__name__ == "hello"
    assert hello.__doc__ == "Says hello."
    assert list(inspect.signature(hello).parameters) == ["name"]
    coro = hello("ada")
    assert inspect.iscoroutine(coro)
    assert await coro == "hello ada"
    assert reg.get_circuit(NAME).statistics().successes == 1


def make_service(reg: resilience.Registry) -> type[Any]:
    cmd = reg.command

    class Svc:
        tag = "svc"

        @cmd(NAME)
        async def method(self, x: int) -> tuple[str, int]:
            return (self.tag, x)

        @cmd(NAME)
        @staticmethod
        async def static_below(x: int) -> tuple[str, int]:
            return ("static", x)

        @staticmethod
        @cmd(NAME)
        async def static_above(x: int) -> tuple[str, int]:
            return ("static", x)

        @cmd(NAME)
        @classmethod
        async def class_below(cls, x: int) -> tuple[str, int]:
            return (cls.__name__, x)

        @classmethod
        @cmd(NAME)
        async def class_above(cls, x: int) -> tuple[str, int]:
            return (cls.__name__, x)

        @cmd(NAME)
        def sync_method(self, x: int) -> tuple[str, int]:
            return (self.tag, x)

        @cmd(NAME)
        @staticmethod
        def sync_static_below(x: int) -> tuple[str, int]:
            return ("static", x)

        @staticmethod
        @cmd(NAME)
        def sync_static_above(x: int) -> tuple[str, int]:
            return ("static", x)

        @cmd(NAME)
        @classmethod
        def sync_class_below(cls, x: int) -> tuple[str, int]:
            return (cls.__name__, x)

        @classmethod
        @cmd(NAME)
        def sync_class_above(cls, x: int) -> tuple[str, int]:
            return (cls.__name__, x)

    return Svc


ASYNC_METHODS = ["method", "static_below", "static_above", "class_below", "class_above"]
SYNC_METHODS = [
    "sync_method", "sync_static_below", "sync_static_above", "sync_class_below",
    "sync_class_above",
]


def _expected(attr: str, cls: type[Any], x: int) -> tuple[str, int]:
    if "static" in attr:
        return ("static", x)
    if "class" in attr:
        return (cls.__name__, x)
    return ("svc", x)


@pytest.mark.parametrize("attr", ASYNC_METHODS)
async def test_async_methods_in_either_decorator_order(
    reg: resilience.Registry, attr: str
) -> None:
    cls = make_service(reg)
    obj = cls()
    targets: list[Callable[..., Any]] = [getattr(obj, attr)]
    if attr != "method":
        targets.append(getattr(cls, attr))  # static/class methods work on the class too
    for target in targets:
        assert inspect.iscoroutinefunction(target), target
        coro = target(7)
        assert inspect.iscoroutine(coro)
        assert await coro == _expected(attr, cls, 7)
    assert reg.get_circuit(NAME).statistics().successes == len(targets)


@pytest.mark.parametrize("attr", SYNC_METHODS)
def test_sync_methods_in_either_decorator_order(reg: resilience.Registry, attr: str) -> None:
    cls = make_service(reg)
    obj = cls()
    targets: list[Callable[..., Any]] = [getattr(obj, attr)]
    if attr != "sync_method":
        targets.append(getattr(cls, attr))
    for target in targets:
        assert not inspect.iscoroutinefunction(target), target
        assert target(8) == _expected(attr, cls, 8)
    assert reg.get_circuit(NAME).statistics().successes == len(targets)


def test_decorated_staticmethod_and_classmethod_keep_their_kind(
    reg: resilience.Registry,
) -> None:
    cls = make_service(reg)
    for attr in ("static_below", "static_above", "sync_static_below", "sync_static_above"):
        assert isinstance(inspect.getattr_static(cls, attr), staticmethod), attr
    for attr in ("class_below", "class_above", "sync_class_below", "sync_class_above"):
        assert isinstance(inspect.getattr_static(cls, attr), classmethod), attr


class AsyncCallable:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, x: int) -> str:
        self.calls += 1
        return f"async-callable {x}"


class InheritedAsyncCallable(AsyncCallable):
    pass


class SyncCallable:
    def __call__(self, x: int) -> str:
        return f"sync-callable {x}"


@pytest.mark.parametrize("cls", [AsyncCallable, InheritedAsyncCallable])
async def test_object_with_async_call_is_async(
    reg: resilience.Registry, cls: type[AsyncCallable]
) -> None:
    target = cls()
    decorated = reg.command(NAME)(target)
    assert inspect.iscoroutinefunction(decorated)
    coro = decorated(3)
    assert inspect.iscoroutine(coro)
    assert await coro == "async-callable 3"
    assert target.calls == 1


def test_object_with_sync_call_is_sync(reg: resilience.Registry) -> None:
    decorated = reg.command(NAME, timeout=None)(SyncCallable())
    assert not inspect.iscoroutinefunction(decorated)
    assert decorated(4) == "sync-callable 4"


async def test_partial_of_async_function_is_async(reg: resilience.Registry) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    decorated = reg.command(NAME)(functools.partial(add, 1))
    assert inspect.iscoroutinefunction(decorated)
    assert await decorated(2) == 3


def test_plain_function_stays_sync(reg: resilience.Registry) -> None:
    @reg.command(NAME)
    def double(x: int) -> int:
        return 2 * x

    assert not inspect.iscoroutinefunction(double)
    assert double(21) == 42
    assert double.__name__ == "double"


# -- generators are refused --------------------------------------------------------------------


def test_generator_function_is_refused(reg: resilience.Registry) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"(?i)decorate the function that consumes"):
        reg.command(NAME)(numbers)


def test_async_generator_function_is_refused(reg: resilience.Registry) -> None:
    async def numbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"(?i)decorate the function that consumes"):
        reg.command(NAME)(numbers)


def test_generator_methods_are_refused_in_either_order(reg: resilience.Registry) -> None:
    def gen(cls: Any) -> Iterator[int]:
        yield 1

    async def agen(cls: Any) -> AsyncIterator[int]:
        yield 1

    decorate: Any = reg.command(NAME)
    for fn in (gen, agen):
        with pytest.raises(TypeError, match=r"(?i)consum"):
            decorate(staticmethod(fn))
        with pytest.raises(TypeError, match=r"(?i)consum"):
            decorate(classmethod(fn))


def test_partial_of_generator_function_is_refused(reg: resilience.Registry) -> None:
    def gen(x: int) -> Iterator[int]:
        yield x

    with pytest.raises(TypeError, match=r"(?i)consum"):
        reg.command(NAME)(functools.partial(gen, 1))


def test_refused_generator_leaves_the_registry_usable(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError):
        reg.command(NAME, timeout=None)(gen)
    assert reg.command(NAME)(ok_sync)() == "ok"


def test_non_callable_is_refused(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError):
        reg.command(NAME)(42)  # type: ignore[call-overload]


# -- a sync function returning a coroutine -----------------------------------------------------


async def _coroutine_result() -> str:
    return "never"


class CoroutineMaker:
    """A plain function that returns a coroutine object (and keeps it to check it)."""

    def __init__(self) -> None:
        self.made: list[Coroutine[Any, Any, str]] = []
        self.threads: list[int] = []

    def __call__(self) -> Coroutine[Any, Any, str]:
        self.threads.append(threading.get_ident())
        coro = _coroutine_result()
        self.made.append(coro)
        return coro


def _assert_refused_and_closed(call: Callable[[], object], maker: CoroutineMaker) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match=r"run\(") as info:
            call()
        assert len(maker.made) == 1
        assert inspect.getcoroutinestate(maker.made[0]) == inspect.CORO_CLOSED
        del info
        maker.made.clear()
        gc.collect()
    never_awaited = [
        w for w in caught
        if issubclass(w.category, RuntimeWarning) and "never awaited" in str(w.message)
    ]
    assert never_awaited == []


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["caller-thread", "worker-thread"])
def test_sync_decorated_function_returning_a_coroutine(
    reg: resilience.Registry, timeout: float | None
) -> None:
    maker = CoroutineMaker()

    @reg.command(NAME, timeout=timeout)
    def returns_coroutine() -> object:
        return maker()

    _assert_refused_and_closed(returns_coroutine, maker)
    # refused at that call only: the command keeps working
    assert reg.command(NAME)(ok_sync)() == "ok"


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["caller-thread", "worker-thread"])
def test_run_sync_of_a_function_returning_a_coroutine(
    reg: resilience.Registry, timeout: float | None
) -> None:
    reg.configure_command(NAME, timeout=timeout)
    maker = CoroutineMaker()
    _assert_refused_and_closed(lambda: reg.run_sync(NAME, maker), maker)


def test_sync_function_returning_a_coroutine_with_a_fallback(
    reg: resilience.Registry,
) -> None:
    maker = CoroutineMaker()
    fallback_calls: list[Exception] = []

    def fallback(exc: Exception) -> str:
        fallback_calls.append(exc)
        return "fallback"

    @reg.command(NAME, timeout=None, fallback=fallback)
    def returns_coroutine() -> object:
        return maker()

    _assert_refused_and_closed(returns_coroutine, maker)
    assert fallback_calls == []  # a programming error, not a dependency's failure


def test_coroutine_returned_after_the_timeout_is_closed_too(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.05)
    release = threading.Event()
    maker = CoroutineMaker()

    @reg.command(NAME)
    def slow_returns_coroutine() -> object:
        release.wait(10)  # returns only after the caller timed out
        return maker()

    try:
        with pytest.raises(resilience.CommandTimeoutError):
            slow_returns_coroutine()
        release.set()
        eventually_sync(lambda: len(maker.made) == 1 and reg.get_circuit(NAME).in_flight == 0)
        eventually_sync(
            lambda: inspect.getcoroutinestate(maker.made[0]) == inspect.CORO_CLOSED, timeout=2.0
        )
    finally:
        release.set()
        for coro in maker.made:
            coro.close()  # (idempotent) so no warning can leak into a later test


# -- threads -------------------------------------------------------------------------------------


def test_plain_def_without_timeout_runs_in_the_callers_thread(reg: resilience.Registry) -> None:
    local = threading.local()
    local.connection = "main-thread-connection"
    seen: list[tuple[int, object]] = []

    @reg.command(NAME, timeout=None)
    def query() -> str:
        seen.append((threading.get_ident(), getattr(local, "connection", None)))
        return "ok"

    assert query() == "ok"
    assert reg.run_sync(NAME, query) == "ok"
    assert seen == [(threading.get_ident(), "main-thread-connection")] * 2


def test_plain_def_without_timeout_in_a_worker_thread(reg: resilience.Registry) -> None:
    local = threading.local()
    seen: list[tuple[int, object]] = []
    callers: list[int] = []

    @reg.command(NAME, timeout=None)
    def query() -> str:
        seen.append((threading.get_ident(), getattr(local, "connection", None)))
        return "ok"

    def worker() -> None:
        local.connection = "worker-connection"
        callers.append(threading.get_ident())
        query()
        reg.run_sync(NAME, query)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen == [(callers[0], "worker-connection")] * 2


def test_plain_def_with_a_timeout_runs_in_another_thread(reg: resilience.Registry) -> None:
    local = threading.local()
    local.connection = "main-thread-connection"
    seen: list[tuple[int, object]] = []

    @reg.command(NAME, timeout=5.0)
    def query() -> str:
        seen.append((threading.get_ident(), getattr(local, "connection", None)))
        return "ok"

    assert query() == "ok"
    assert reg.run_sync(NAME, query) == "ok"
    assert len(seen) == 2
    for ident, connection in seen:
        assert ident != threading.get_ident()
        assert connection is None


def test_timeout_none_set_later_takes_effect(reg: resilience.Registry) -> None:
    seen: list[int] = []

    @reg.command(NAME, timeout=5.0)
    def query() -> None:
        seen.append(threading.get_ident())

    query()
    reg.configure_command(NAME, timeout=None)
    query()
    assert seen[0] != threading.get_ident()
    assert seen[1] == threading.get_ident()


# -- fallback arity -------------------------------------------------------------------------------


def _no_args() -> str:
    return "x"


def _two_args(exc: Exception, extra: object) -> str:
    return "x"


def _keyword_only(*, exc: Exception) -> str:
    return "x"


BAD_FALLBACKS: list[Any] = [lambda: "x", _no_args, _two_args, _keyword_only]
BAD_IDS = ["lambda-no-arg", "no-arg", "two-args", "keyword-only"]


def _one_arg(exc: Exception) -> str:
    return "fallback"


def _star_args(*args: object) -> str:
    return "fallback"


def _with_default(exc: Exception, extra: object = None) -> str:
    return "fallback"


class _Handler:
    def handle(self, exc: Exception) -> str:
        return "fallback"


GOOD_FALLBACKS: list[Any] = [
    lambda exc: "fallback", _one_arg, _star_args, _with_default, lambda *a, **k: "fallback",
    _Handler().handle,
]
GOOD_IDS = ["lambda", "one-arg", "star-args", "default", "star-args-kwargs", "bound-method"]


@pytest.mark.parametrize("fallback", BAD_FALLBACKS, ids=BAD_IDS)
def test_bad_fallback_arity_is_refused_when_decorating(
    reg: resilience.Registry, fallback: Any
) -> None:
    with pytest.raises(TypeError, match="fallback"):
        reg.command(NAME, fallback=fallback)

    with pytest.raises(TypeError, match="fallback"):

        @reg.command(NAME, fallback=fallback)
        async def fn() -> str:
            return "ok"


@pytest.mark.parametrize("fallback", BAD_FALLBACKS, ids=BAD_IDS)
async def test_bad_fallback_arity_is_refused_by_run(
    reg: resilience.Registry, fallback: Any
) -> None:
    called = False

    async def fn() -> str:
        nonlocal called
        called = True
        return "ok"

    def plain() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(TypeError, match="fallback"):
        await reg.run(NAME, fn, fallback=fallback)
    with pytest.raises(TypeError, match="fallback"):
        await reg.run(NAME, plain, fallback=fallback)
    assert not called
    assert await reg.run(NAME, fn) == "ok"  # the name is fine afterwards


async def test_run_checks_a_new_fallback_for_a_cached_function(
    reg: resilience.Registry,
) -> None:
    async def fn() -> str:
        return "ok"

    assert await reg.run(NAME, fn, fallback=_one_arg) == "ok"  # cached with a good fallback
    with pytest.raises(TypeError, match="fallback"):
        await reg.run(NAME, fn, fallback=BAD_FALLBACKS[1])
    assert await reg.run(NAME, fn, fallback=_one_arg) == "ok"


@pytest.mark.parametrize("fallback", BAD_FALLBACKS[:1], ids=BAD_IDS[:1])
def test_bad_fallback_arity_is_refused_by_run_sync(
    reg: resilience.Registry, fallback: Any
) -> None:
    reg.configure_command(NAME, timeout=None)
    with pytest.raises(TypeError, match="fallback"):
        reg.run_sync(NAME, ok_sync, fallback=fallback)


@pytest.mark.parametrize("fallback", GOOD_FALLBACKS, ids=GOOD_IDS)
async def test_fallback_taking_one_argument_is_accepted(
    reg: resilience.Registry, fallback: Any
) -> None:
    async def boom() -> str:
        raise Boom("down")

    decorated = reg.command(NAME, fallback=fallback)(boom)
    assert await decorated() == "fallback"
    assert await reg.run(NAME, boom, fallback=fallback) == "fallback"

    def sync_boom() -> str:
        raise Boom("down")

    sync_decorated = reg.command(NAME, fallback=fallback)(sync_boom)
    assert sync_decorated() == "fallback"
    assert reg.run_sync(NAME, sync_boom, fallback=fallback) == "fallback"


def test_non_callable_fallback_is_refused(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError, match="fallback"):
        reg.command(NAME, fallback="cached")  # type: ignore[arg-type]


def test_async_fallback_on_a_plain_def_is_refused_when_decorating(
    reg: resilience.Registry,
) -> None:
    async def fallback(exc: Exception) -> str:
        return "x"

    with pytest.raises(TypeError, match="fallback"):
        reg.command(NAME, fallback=fallback)(ok_sync)


# -- ConfigurationWarning ----------------------------------------------------------------------


def test_configuration_warning_is_a_user_warning() -> None:
    assert issubclass(ConfigurationWarning, UserWarning)


def test_conflicting_decorators_warn(reg: resilience.Registry) -> None:
    @reg.command("shared", timeout=1.0, max_concurrent_requests=5, buckets=10)
    async def first() -> str:
        return "a"

    with pytest.warns(ConfigurationWarning) as record:

        @reg.command("shared", timeout=2.0, max_concurrent_requests=5, sleep_window=1.0)
        async def second() -> str:
            return "b"

    assert len(record) == 1
    message = str(record[0].message)
    assert "shared" in message
    assert "timeout" in message
    assert "max_concurrent_requests" not in message  # agreed
    assert "sleep_window" not in message  # set by one decorator only
    assert "buckets" not in message
    assert record[0].filename == __file__  # points at the decoration
    # the last one wins
    assert reg.get_circuit("shared").config.timeout == 2.0


def test_conflict_warning_names_every_conflicting_field(reg: resilience.Registry) -> None:
    reg.command("shared", timeout=1.0, buckets=10, sleep_window=3.0)(ok_sync)
    with pytest.warns(ConfigurationWarning) as record:
        reg.command("shared", timeout=3.0, buckets=5, sleep_window=3.0)(ok_sync)
    message = str(record[0].message)
    assert "timeout" in message and "buckets" in message
    assert "sleep_window" not in message


def test_agreeing_decorators_do_not_warn(reg: resilience.Registry) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.command("agree", timeout=1.0, buckets=10)(ok_sync)
        reg.command("agree", timeout=1.0, buckets=10)(ok)
        reg.command("agree", sleep_window=2.0)(ok_sync)  # a different field
        reg.command("agree")(ok_sync)  # no keywords at all
        reg.command("agree", fallback=lambda e: "x")(ok_sync)  # a fallback is per call site


def test_equivalent_spellings_of_one_value_do_not_warn(reg: resilience.Registry) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.command("spelling", ignore_exceptions=KeyError)(ok_sync)
        reg.command("spelling", ignore_exceptions=(KeyError,))(ok_sync)
    assert reg.get_circuit("spelling").config.ignore_exceptions == (KeyError,)


def test_equal_numbers_of_different_types_do_not_warn(reg: resilience.Registry) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.command("numbers", timeout=1)(ok_sync)
        reg.command("numbers", timeout=1.0)(ok_sync)


def test_configure_command_between_decorators_is_not_a_conflict(
    reg: resilience.Registry,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.command("cfg", timeout=1.0)(ok_sync)
        reg.configure_command("cfg", timeout=5.0)
        reg.configure_command("cfg", buckets=5)
        reg.command("cfg", buckets=5)(ok_sync)


def test_refused_decorator_settings_are_not_remembered(reg: resilience.Registry) -> None:
    reg.command("refused", timeout=1.0)(ok_sync)
    with pytest.raises(ValueError):
        reg.command("refused", timeout=-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.command("refused", timeout=1.0)(ok_sync)


def test_decorators_in_different_registries_do_not_conflict(clock: FakeClock) -> None:
    one, two = make_registry(clock), make_registry(clock)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one.command("same", timeout=1.0)(ok_sync)
        two.command("same", timeout=2.0)(ok_sync)
        one.command("other", timeout=2.0)(ok_sync)


# -- public surface ----------------------------------------------------------------------------


PUBLIC_NAMES = [
    "Circuit",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStatistics",
    "CommandConfig",
    "CommandDecorator",
    "CommandError",
    "CommandTimeoutError",
    "ConfigurationWarning",
    "Event",
    "FailedResultError",
    "JobHandle",
    "MaxConcurrencyError",
    "PoolClosedError",
    "PoolError",
    "PoolFullError",
    "PoolStatistics",
    "RateLimitedError",
    "RateLimiter",
    "Registry",
    "ResilienceError",
    "Retry",
    "RetryScheduled",
    "StateChange",
    "WorkerPool",
    "__version__",
    "command",
    "configure",
    "configure_command",
    "flush",
    "get_circuit",
    "run",
    "run_sync",
    "subscribe",
]


def test_version_comes_from_the_installed_metadata() -> None:
    assert resilience.__version__ == importlib.metadata.version("anyio-resilience")


def test_all_is_sorted() -> None:
    assert list(resilience.__all__) == sorted(resilience.__all__)


def test_public_names_are_pinned() -> None:
    assert list(resilience.__all__) == PUBLIC_NAMES
    assert len(set(resilience.__all__)) == len(resilience.__all__)
    for name in resilience.__all__:
        assert hasattr(resilience, name), name


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from resilience import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(PUBLIC_NAMES)


def test_public_classes_show_resilience_as_their_module() -> None:
    classes = [
        getattr(resilience, n) for n in resilience.__all__
        if isinstance(getattr(resilience, n), type)
    ]
    assert len(classes) >= 20
    for cls in classes:
        assert cls.__module__ == "resilience", cls


def test_errors_repr_names_the_public_module(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, force_open=True, timeout=None)
    with pytest.raises(resilience.CircuitOpenError) as info:
        reg.run_sync(NAME, ok_sync)
    assert "resilience._" not in "".join(
        traceback.format_exception_only(info.type, info.value)
    )
    assert info.type.__module__ == "resilience"


def test_circuit_has_exactly_the_documented_public_attributes(reg: resilience.Registry) -> None:
    circuit = reg.get_circuit(NAME)
    public = {a for a in dir(circuit) if not a.startswith("_")}
    assert public == {"name", "state", "config", "statistics", "in_flight"}
    assert circuit.name == NAME
    assert circuit.state is resilience.CircuitState.CLOSED
    assert isinstance(circuit.config, resilience.CommandConfig)
    assert isinstance(circuit.statistics(), resilience.CircuitStatistics)
    assert circuit.in_flight == 0


def test_module_level_get_circuit_has_the_same_attributes() -> None:
    circuit = resilience.get_circuit("decorate-public-surface")
    assert {a for a in dir(circuit) if not a.startswith("_")} == {
        "name", "state", "config", "statistics", "in_flight",
    }


def test_decorated_calls_count_in_metrics(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.command(NAME, timeout=None)(ok_sync)()
    assert calls_total(metrics_registry, NAME, "success") == 1
