"""The command API (docs/commands.md): configuration, decorator, run/run_sync, introspection.

Validation names the field at configuration time; ``configure_command`` merges keywords and
replaces with a ``CommandConfig``; the decorator keeps the function's identity and sync/async
nature; ``run`` accepts partials, sync callables and callables returning awaitables;
``run_sync`` works from plain sync code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import uuid
from typing import Any, cast

import anyio
import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import (
    Boom,
    FakeClock,
    SyncHold,
    calls_total,
    eventually_sync,
    failing,
    make_registry,
    ok,
    ok_sync,
    recording,
)

import resilience
from resilience import (
    CircuitOpenError,
    CircuitState,
    CommandConfig,
    CommandTimeoutError,
    MaxConcurrencyError,
)

NAME = "api"


@pytest.fixture
def reg(clock: FakeClock, metrics_registry: CollectorRegistry) -> resilience.Registry:
    return make_registry(clock, metrics_registry)


# -- CommandConfig -------------------------------------------------------------------------


def test_defaults_are_hystrix_defaults() -> None:
    c = CommandConfig()
    assert c.timeout == 1.0
    assert c.max_concurrent_requests == 10
    assert c.request_volume_threshold == 20
    assert c.error_percent_threshold == 50
    assert c.sleep_window == 5.0
    assert c.rolling_window == 10.0
    assert c.buckets == 10
    assert c.ignore_exceptions == ()
    assert c.force_open is False
    assert c.force_closed is False


def test_config_is_frozen() -> None:
    c = CommandConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timeout = 2.0  # type: ignore[misc]


INVALID = [
    ("timeout", 0),
    ("timeout", -1.0),
    ("error_percent_threshold", 0),
    ("error_percent_threshold", 101),
    ("error_percent_threshold", -5),
    ("max_concurrent_requests", 0),
    ("max_concurrent_requests", -1),
    ("request_volume_threshold", -1),
    ("sleep_window", -0.1),
    ("rolling_window", 0),
    ("rolling_window", -10.0),
    ("buckets", 0),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CommandConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_configure_command_rejects_invalid_values_and_keeps_the_old_config(
    reg: resilience.Registry, field: str, value: object
) -> None:
    reg.configure_command(NAME, timeout=0.5, max_concurrent_requests=3)
    before = reg.get_circuit(NAME).config
    with pytest.raises(ValueError, match=field):
        reg.configure_command(NAME, **{field: value})
    assert reg.get_circuit(NAME).config == before


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_decorator_validates_at_decoration_time(
    reg: resilience.Registry, field: str, value: object
) -> None:
    with pytest.raises(ValueError, match=field):

        @reg.command(NAME, **cast(dict[str, Any], {field: value}))
        async def never_called() -> None:  # pragma: no cover
            raise AssertionError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", None),
        ("timeout", 0.001),
        ("error_percent_threshold", 1),
        ("error_percent_threshold", 100),
        ("max_concurrent_requests", 1),
        ("request_volume_threshold", 0),
        ("sleep_window", 0),
        ("rolling_window", 0.5),
        ("buckets", 1),
    ],
)
def test_edge_values_are_valid(reg: resilience.Registry, field: str, value: object) -> None:
    assert getattr(CommandConfig(**{field: value}), field) == value  # type: ignore[arg-type]
    reg.configure_command(NAME, **{field: value})
    assert getattr(reg.get_circuit(NAME).config, field) == value


def test_unknown_fields_raise_type_error(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError):
        CommandConfig(tiemout=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="tiemout"):
        reg.configure_command(NAME, tiemout=1.0)
    with pytest.raises(TypeError, match="tiemout"):
        reg.command(NAME, tiemout=1.0)
    assert reg.get_circuit(NAME).config == CommandConfig()


# -- configure / configure_command ---------------------------------------------------------


def test_configure_command_keywords_merge(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.5)
    reg.configure_command(NAME, max_concurrent_requests=3)
    config = reg.get_circuit(NAME).config
    assert config.timeout == 0.5
    assert config.max_concurrent_requests == 3
    assert config.sleep_window == CommandConfig().sleep_window


def test_configure_command_with_a_config_replaces(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.5, max_concurrent_requests=3)
    reg.configure_command(NAME, CommandConfig(timeout=2.0))
    assert reg.get_circuit(NAME).config == CommandConfig(timeout=2.0)


def test_configure_many(reg: resilience.Registry) -> None:
    a = CommandConfig(timeout=0.25, sleep_window=1.0)
    b = CommandConfig(max_concurrent_requests=2)
    reg.configure_command("b", timeout=9.0)
    reg.configure({"a": a, "b": b})
    assert reg.get_circuit("a").config == a
    assert reg.get_circuit("b").config == b


def test_decorator_keywords_apply_at_decoration_and_last_call_wins(
    reg: resilience.Registry,
) -> None:
    reg.configure_command(NAME, timeout=0.3, sleep_window=2.0)

    @reg.command(NAME, timeout=0.25)
    async def f() -> None:
        pass

    config = reg.get_circuit(NAME).config
    assert config.timeout == 0.25  # applied when decorated, before any call
    assert config.sleep_window == 2.0  # merged, not replaced
    reg.configure_command(NAME, timeout=0.75)
    assert reg.get_circuit(NAME).config.timeout == 0.75

    @reg.command(NAME)  # no keywords: changes nothing
    def g() -> None:
        pass

    assert reg.get_circuit(NAME).config.timeout == 0.75


# -- decorator -----------------------------------------------------------------------------


async def test_async_decorator_keeps_identity_and_stays_async(reg: resilience.Registry) -> None:
    async def original(a: int, b: str = "x", *, c: float = 1.5) -> str:
        """Greets."""
        return f"{a}-{b}-{c}"

    decorated = reg.command(NAME, timeout=1.0)(original)
    assert decorated.__name__ == "original"
    assert decorated.__doc__ == "Greets."
    assert inspect.signature(decorated) == inspect.signature(original)
    assert decorated.__wrapped__ is original  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(decorated)
    assert await decorated(1, "y", c=2.0) == "1-y-2.0"
    assert await decorated(a=3) == "3-x-1.5"
    assert reg.get_circuit(NAME).statistics().successes == 2


def test_sync_decorator_keeps_identity_and_stays_sync(reg: resilience.Registry) -> None:
    main = threading.get_ident()
    idents: list[int] = []

    def original(a: int, b: str = "x", *, c: float = 1.5) -> str:
        """Adds."""
        idents.append(threading.get_ident())
        return f"{a}-{b}-{c}"

    decorated = reg.command(NAME)(original)
    assert decorated.__name__ == "original"
    assert decorated.__doc__ == "Adds."
    assert inspect.signature(decorated) == inspect.signature(original)
    assert not inspect.iscoroutinefunction(decorated)
    assert decorated(1, b="z", c=0.5) == "1-z-0.5"  # plain sync call, no event loop
    assert idents and idents[0] != main, "a plain def runs in a worker thread"
    assert reg.get_circuit(NAME).statistics().successes == 1


def test_sync_decorator_timeout_holds_from_sync_code(reg: resilience.Registry) -> None:
    hold = SyncHold()
    decorated = reg.command(NAME, timeout=0.05, max_concurrent_requests=1)(hold.fn)
    try:
        with pytest.raises(CommandTimeoutError):
            decorated()
        assert hold.entered.is_set() and not hold.returned.is_set()
        with pytest.raises(MaxConcurrencyError):  # the thread still holds the slot
            decorated()
    finally:
        hold.release.set()
    assert hold.returned.wait(5)
    eventually_sync(lambda: reg.get_circuit(NAME).in_flight == 0)
    assert decorated() == "sync-held"


async def test_decorator_on_methods(reg: resilience.Registry) -> None:
    class Client:
        def __init__(self, base: int) -> None:
            self.base = base

        @reg.command(NAME)
        async def fetch(self, x: int) -> int:
            return self.base + x

        @reg.command("sync-method")
        def compute(self, x: int) -> int:
            return self.base * x

    client = Client(10)
    assert await client.fetch(5) == 15
    assert await anyio.to_thread.run_sync(client.compute, 3) == 30


async def test_decorator_fallback(reg: resilience.Registry) -> None:
    seen: list[BaseException] = []

    @reg.command(NAME, fallback=recording(seen, "fallback"))
    async def flaky() -> str:
        raise Boom("down")

    assert await flaky() == "fallback"
    assert isinstance(seen[0], Boom)

    @reg.command("sync-" + NAME, fallback=recording(seen, "sync fallback"))
    def sync_flaky() -> str:
        raise Boom("sync down")

    assert await anyio.to_thread.run_sync(sync_flaky) == "sync fallback"
    assert isinstance(seen[1], Boom) and str(seen[1]) == "sync down"


async def test_call_sites_of_one_name_share_the_circuit(reg: resilience.Registry) -> None:
    @reg.command(NAME, request_volume_threshold=2, error_percent_threshold=100, timeout=None)
    async def first() -> str:
        raise Boom()

    @reg.command(NAME)
    async def second() -> str:
        return "second"

    for _ in range(2):
        with pytest.raises(Boom):
            await first()
    with pytest.raises(CircuitOpenError):
        await second()
    with pytest.raises(CircuitOpenError):
        await reg.run(NAME, ok)


def test_other_registries_and_names_are_isolated(clock: FakeClock) -> None:
    one = make_registry(clock)
    two = make_registry(clock)
    one.configure_command(NAME, request_volume_threshold=1, error_percent_threshold=100)
    with pytest.raises(Boom):
        one.run_sync(NAME, _raise_boom)
    assert one.get_circuit(NAME).state is CircuitState.OPEN
    assert one.get_circuit("other").state is CircuitState.CLOSED
    assert two.get_circuit(NAME).state is CircuitState.CLOSED
    assert two.get_circuit(NAME).config == CommandConfig()
    assert two.run_sync(NAME, ok_sync) == "ok"


def _raise_boom() -> None:
    raise Boom()


# -- run -----------------------------------------------------------------------------------


async def test_run_passes_positional_arguments_and_partials(reg: resilience.Registry) -> None:
    async def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    assert await reg.run(NAME, add, 1, 2) == 3
    assert await reg.run(NAME, functools.partial(add, 1, scale=10), 2) == 30
    assert await reg.run(NAME, functools.partial(functools.partial(add, scale=2), 1), 1) == 4


async def test_coroutine_functions_and_partials_run_in_the_callers_task(
    reg: resilience.Registry,
) -> None:
    caller = anyio.get_current_task().id
    seen: list[int] = []

    async def where(tag: str) -> str:
        seen.append(anyio.get_current_task().id)
        return tag

    assert await reg.run(NAME, where, "plain") == "plain"
    assert await reg.run(NAME, functools.partial(where, "partial")) == "partial"
    assert seen == [caller, caller]


async def test_partial_of_coroutine_function_is_really_cancelled_on_timeout(
    reg: resilience.Registry,
) -> None:
    reg.configure_command(NAME, timeout=0.05)
    cleaned_up = False

    async def slow(_: int) -> None:
        nonlocal cleaned_up
        try:
            await anyio.sleep_forever()
        finally:
            cleaned_up = True

    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, functools.partial(slow, 1))
    assert cleaned_up


async def test_sync_callable_from_async_code_runs_in_a_thread(reg: resilience.Registry) -> None:
    main = threading.get_ident()
    seen: list[int] = []

    def work(a: int, b: int) -> int:
        seen.append(threading.get_ident())
        return a * b

    assert await reg.run(NAME, work, 6, 7) == 42
    assert await reg.run(NAME, functools.partial(work, 2), 3) == 6
    assert seen and all(t != main for t in seen)


async def test_callable_returning_an_awaitable_is_awaited(reg: resilience.Registry) -> None:
    async def inner(x: int) -> int:
        await anyio.sleep(0)
        return x + 1

    class Factory:
        def __call__(self, x: int) -> Any:
            return inner(x)

    class AsyncCallable:
        async def __call__(self, x: int) -> int:
            return x * 2

    assert await reg.run(NAME, lambda: inner(1)) == 2
    assert await reg.run(NAME, Factory(), 41) == 42
    assert await reg.run(NAME, AsyncCallable(), 21) == 42


async def test_returned_awaitable_runs_under_the_same_deadline(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.05)
    cleaned_up = False

    async def forever() -> None:
        nonlocal cleaned_up
        try:
            await anyio.sleep_forever()
        finally:
            cleaned_up = True

    with pytest.raises(CommandTimeoutError):
        await reg.run(NAME, lambda: forever())
    assert cleaned_up
    assert reg.get_circuit(NAME).in_flight == 0


async def test_run_options_are_keyword_only(reg: resilience.Registry) -> None:
    async def echo(*args: object) -> tuple[object, ...]:
        return args

    # A positional argument after fn always goes to fn, never to an option.
    assert await reg.run(NAME, echo, None, "x") == (None, "x")


# -- run_sync ------------------------------------------------------------------------------


def test_run_sync_from_plain_sync_code(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    assert reg.run_sync(NAME, lambda a, b: a + b, 2, 3) == 5
    assert reg.run_sync(NAME, functools.partial(pow, 2), 10) == 1024
    err = Boom("sync failure")

    def fail() -> None:
        raise err

    with pytest.raises(Boom) as info:
        reg.run_sync(NAME, fail)
    assert info.value is err
    assert reg.run_sync(NAME, fail, fallback=lambda exc: "fb") == "fb"
    assert calls_total(metrics_registry, NAME, "success") == 2
    assert calls_total(metrics_registry, NAME, "failure") == 2


def test_run_sync_timeout_from_plain_sync_code(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.05)
    hold = SyncHold()
    try:
        with pytest.raises(CommandTimeoutError):
            reg.run_sync(NAME, hold.fn)
    finally:
        hold.release.set()
    assert hold.returned.wait(5)
    eventually_sync(lambda: reg.get_circuit(NAME).in_flight == 0)


def test_run_sync_from_several_threads_shares_the_limit(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1, timeout=None)
    hold = SyncHold()
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(reg.run_sync(NAME, hold.fn)))
    t.start()
    try:
        assert hold.entered.wait(5)
        with pytest.raises(MaxConcurrencyError):
            reg.run_sync(NAME, ok_sync)
    finally:
        hold.release.set()
        t.join(5)
    assert results == ["sync-held"]
    assert reg.get_circuit(NAME).in_flight == 0
    assert reg.run_sync(NAME, ok_sync) == "ok"


# -- introspection -------------------------------------------------------------------------


def test_get_circuit_of_an_unknown_name(reg: resilience.Registry) -> None:
    circuit = reg.get_circuit("never-run")
    assert circuit.name == "never-run"
    assert circuit.state is CircuitState.CLOSED
    assert circuit.config == CommandConfig()
    assert circuit.in_flight == 0
    s = circuit.statistics()
    assert (
        s.requests, s.successes, s.failures, s.timeouts, s.rejections, s.short_circuits,
        s.fallback_successes, s.fallback_failures,
    ) == (0,) * 8
    assert s.error_percent == 0


async def test_statistics_snapshot_does_not_change_afterwards(reg: resilience.Registry) -> None:
    snap = reg.get_circuit(NAME).statistics()
    await reg.run(NAME, ok)
    with pytest.raises(Boom):
        await reg.run(NAME, failing(Boom()))
    assert snap.requests == 0
    with pytest.raises(AttributeError):  # a frozen snapshot, not a live view
        snap.requests = 5  # type: ignore[misc]
    now = reg.get_circuit(NAME).statistics()
    assert (now.requests, now.successes, now.failures) == (2, 1, 1)
    assert now.error_percent == pytest.approx(50)


def test_circuit_state_is_a_str_enum() -> None:
    assert {s.value for s in CircuitState} == {"closed", "open", "half_open"}
    names: list[str] = ["closed", "open", "half_open"]
    assert names == [CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN]
    assert all(isinstance(s, str) for s in CircuitState)
    assert CircuitState("half_open") is CircuitState.HALF_OPEN


def test_exception_tree() -> None:
    assert issubclass(resilience.ResilienceError, Exception)
    assert issubclass(resilience.CommandError, resilience.ResilienceError)
    for cls in (CircuitOpenError, MaxConcurrencyError, CommandTimeoutError):
        assert issubclass(cls, resilience.CommandError)
    assert issubclass(CommandTimeoutError, TimeoutError)


# -- module-level default registry ---------------------------------------------------------


async def test_module_level_functions_use_one_default_registry() -> None:
    name = f"test-default-{uuid.uuid4().hex}"
    resilience.configure_command(name, timeout=0.5, request_volume_threshold=1,
                                 error_percent_threshold=100)
    assert resilience.get_circuit(name).config.timeout == 0.5

    @resilience.command(name)
    async def flaky() -> str:
        raise Boom()

    with pytest.raises(Boom):
        await flaky()
    with pytest.raises(CircuitOpenError):
        await resilience.run(name, ok)
    with pytest.raises(CircuitOpenError):
        await anyio.to_thread.run_sync(lambda: resilience.run_sync(name, ok_sync))
    resilience.flush()
    assert resilience.get_circuit(name).state is CircuitState.CLOSED
    assert resilience.get_circuit(name).config.timeout == 0.5
    resilience.configure({name: CommandConfig(timeout=0.25)})
    assert resilience.get_circuit(name).config == CommandConfig(timeout=0.25)
    assert await resilience.run(name, ok) == "ok"


def test_one_registry_serves_event_loops_of_both_backends_and_sync_code(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    """The default registry is shared by everything in a process: no loop may own it."""
    reg.configure_command(NAME, max_concurrent_requests=2, timeout=0.5)

    async def calls() -> None:
        assert await reg.run(NAME, ok) == "ok"
        assert await reg.run(NAME, ok_sync) == "ok"
        with pytest.raises(CommandTimeoutError):
            await _timeout_once(reg)

    for backend in ("asyncio", "trio", "asyncio", "trio"):
        anyio.run(calls, backend=backend)
        assert reg.run_sync(NAME, ok_sync) == "ok"
    assert calls_total(metrics_registry, NAME, "success") == 12
    assert calls_total(metrics_registry, NAME, "timeout") == 4
    assert reg.get_circuit(NAME).in_flight == 0


async def _timeout_once(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=0.02)
    try:
        await reg.run(NAME, anyio.sleep_forever)
    finally:
        reg.configure_command(NAME, timeout=0.5)


# -- run()'s cache of callers ------------------------------------------------------------------


class _Unhashable:
    """A callable that cannot be a dict key (it defines __eq__ without __hash__)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unhashable)

    def __call__(self, x: int) -> int:
        return x * 2


async def test_run_caches_per_name_fn_and_fallback(reg: resilience.Registry) -> None:
    assert await reg.run("a", ok) == "ok"
    assert await reg.run("b", ok) == "ok"
    assert await reg.run("a", ok) == "ok"
    assert reg.get_circuit("a").statistics().successes == 2
    assert reg.get_circuit("b").statistics().successes == 1
    # the same function with and without a fallback: each call gets its own
    boom = failing(Boom("down"))
    assert await reg.run("f", boom, fallback=lambda exc: "fallback") == "fallback"
    with pytest.raises(Boom):
        await reg.run("f", boom)
    assert await reg.run("f", boom, fallback=lambda exc: "again") == "again"


async def test_run_alternating_functions_of_one_name_each_run_their_own(
    reg: resilience.Registry,
) -> None:
    """The name's most recent caller is a shortcut, checked by identity: alternating
    functions (and fallbacks) never run one another."""

    async def first() -> str:
        return "first"

    async def second() -> str:
        return "second"

    boom = failing(Boom("down"))
    for _ in range(3):
        assert await reg.run("alt", first) == "first"
        assert await reg.run("alt", second) == "second"
        assert await reg.run("alt", boom, fallback=lambda exc: "fb-1") == "fb-1"
        assert await reg.run("alt", boom, fallback=lambda exc: "fb-2") == "fb-2"
    assert reg.get_circuit("alt").statistics().successes == 6


async def test_run_takes_unhashable_callables(reg: resilience.Registry) -> None:
    fn = _Unhashable()
    assert await reg.run("u", fn, 2) == 4
    assert await reg.run("u", fn, 3) == 6
    assert reg.get_circuit("u").statistics().successes == 2


async def test_run_caller_cache_stays_bounded(reg: resilience.Registry) -> None:
    async def one(i: int) -> int:
        return i

    for i in range(3000):  # a fresh partial per call: never the same key twice
        assert await reg.run("bounded", functools.partial(one, i)) == i
    from resilience._registry import CALLERS_PER_NAME

    assert sum(len(callers) for callers in reg._callers.values()) <= CALLERS_PER_NAME
    assert reg.get_circuit("bounded").statistics().successes == 3000
