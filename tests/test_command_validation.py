"""Validation rules (docs/commands.md), ``ignore_exceptions`` predicates and ``failed_if``.

``CommandConfig`` is keyword-only and frozen; a value of the wrong type raises ``TypeError``
naming the field, a wrong value ``ValueError`` naming the field and the value, at
configuration time; a value accepted never makes a later call fail. Names are non-empty,
UTF-8-encodable ``str``s, checked wherever given, and a refused name leaves the registry (and
its exposition) intact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from test_command_helpers import (
    Boom,
    FakeClock,
    all_calls,
    calls_total,
    fallbacks_total,
    ok,
    ok_sync,
    stats_tuple,
)

import resilience
from resilience import CommandConfig, FailedResultError

NAME = "validation"

FIELDS = [
    "timeout", "max_concurrent_requests", "max_wait", "count_rejections",
    "request_volume_threshold", "error_percent_threshold", "sleep_window", "rolling_window",
    "buckets", "ignore_exceptions", "failed_if", "force_open", "force_closed",
]


# -- CommandConfig itself -------------------------------------------------------------------------


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        CommandConfig(1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        CommandConfig(1.0, 10)  # type: ignore[call-arg]


def test_config_is_frozen() -> None:
    config = CommandConfig()
    for field in FIELDS:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, field, getattr(config, field))
    assert config == CommandConfig()


def test_config_fields_are_the_documented_ones() -> None:
    assert {f.name for f in dataclasses.fields(CommandConfig)} >= set(FIELDS)


# -- wrong types: TypeError naming the field ---------------------------------------------------

WRONG_TYPES: list[tuple[str, Any]] = [
    ("timeout", "1"),
    ("timeout", True),
    ("timeout", b"1"),
    ("max_concurrent_requests", True),
    ("max_concurrent_requests", 2.0),
    ("max_concurrent_requests", "10"),
    ("max_wait", "0"),
    ("max_wait", None),
    ("buckets", 1.5),
    ("buckets", "10"),
    ("buckets", False),
    ("request_volume_threshold", 4.0),
    ("request_volume_threshold", True),
    ("error_percent_threshold", "50"),
    ("error_percent_threshold", True),
    ("sleep_window", "5"),
    ("sleep_window", None),
    ("rolling_window", "10"),
    ("rolling_window", None),
    ("count_rejections", 1),
    ("count_rejections", "yes"),
    ("failed_if", 3),
    ("failed_if", "x"),
    ("ignore_exceptions", [1]),
    ("ignore_exceptions", "x"),
    ("ignore_exceptions", (KeyError, "x")),
    ("ignore_exceptions", int),
    ("ignore_exceptions", [int]),
    ("ignore_exceptions", 3),
    ("force_open", "yes"),
    ("force_open", 1),
    ("force_closed", "yes"),
    ("force_closed", None),
]


def _ids(cases: list[tuple[str, Any]]) -> list[str]:
    return [f"{field}={value!r}"[:60] for field, value in cases]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES, ids=_ids(WRONG_TYPES))
def test_wrong_type_raises_type_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=field):
        CommandConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES, ids=_ids(WRONG_TYPES))
def test_wrong_type_through_the_registry(
    reg: resilience.Registry, field: str, value: Any
) -> None:
    reg.configure_command(NAME, timeout=0.5)
    before = reg.get_circuit(NAME).config
    with pytest.raises(TypeError, match=field):
        reg.configure_command(NAME, **{field: value})
    with pytest.raises(TypeError, match=field):
        reg.command(NAME, **{field: value})
    assert reg.get_circuit(NAME).config == before


# -- wrong values: ValueError naming the field and the value ---------------------------------

WRONG_VALUES: list[tuple[str, Any]] = [
    ("timeout", 0),
    ("timeout", 0.0),
    ("timeout", -0.0),
    ("timeout", -1),
    ("timeout", math.inf),
    ("timeout", -math.inf),
    ("timeout", math.nan),
    ("timeout", 86_401),
    ("timeout", 86_400.000001),
    ("max_wait", -1),
    ("max_wait", -1e-9),
    ("max_wait", math.inf),
    ("max_wait", math.nan),
    ("max_wait", 86_401),
    ("error_percent_threshold", 0),
    ("error_percent_threshold", 0.5),
    ("error_percent_threshold", 101),
    ("error_percent_threshold", 100.5),
    ("error_percent_threshold", math.nan),
    ("error_percent_threshold", math.inf),
    ("max_concurrent_requests", 0),
    ("max_concurrent_requests", -1),
    ("request_volume_threshold", -1),
    ("sleep_window", -1),
    ("sleep_window", 86_401),
    ("sleep_window", math.inf),
    ("sleep_window", math.nan),
    ("rolling_window", 0),
    ("rolling_window", 5e-324),
    ("rolling_window", 0.000999),
    ("rolling_window", 86_401),
    ("rolling_window", math.inf),
    ("rolling_window", math.nan),
    ("buckets", 0),
    ("buckets", -1),
    ("buckets", 1001),
    ("buckets", 10**7),
    ("buckets", 10**12),
]


def _value_pattern(value: object) -> str:
    """How the message may spell the value: its repr (``nan``/``NaN`` case-insensitively)."""
    if isinstance(value, float) and math.isnan(value):
        return r"(?i)nan"
    if isinstance(value, float) and math.isinf(value):
        return r"(?i)inf"
    return re.escape(repr(value))


@pytest.mark.parametrize(("field", "value"), WRONG_VALUES, ids=_ids(WRONG_VALUES))
def test_wrong_value_raises_value_error_naming_field_and_value(
    field: str, value: Any
) -> None:
    with pytest.raises(ValueError) as info:
        CommandConfig(**{field: value})
    message = str(info.value)
    assert field in message
    assert re.search(_value_pattern(value), message), message


@pytest.mark.parametrize(("field", "value"), WRONG_VALUES, ids=_ids(WRONG_VALUES))
def test_wrong_value_through_the_registry_keeps_the_config(
    reg: resilience.Registry, field: str, value: Any
) -> None:
    reg.configure_command(NAME, timeout=0.5, buckets=5)
    before = reg.get_circuit(NAME).config
    with pytest.raises(ValueError, match=field):
        reg.configure_command(NAME, **{field: value})
    with pytest.raises(ValueError, match=field):
        reg.command(NAME, **{field: value})
    with pytest.raises(ValueError, match=field):
        reg.configure({NAME: CommandConfig(**{field: value})})
    assert reg.get_circuit(NAME).config == before


HUGE_INTS: list[tuple[str, Any]] = [
    ("timeout", 10**400),
    ("max_wait", 10**400),
    ("sleep_window", 10**400),
    ("rolling_window", 10**400),
    ("error_percent_threshold", 10**400),
]


@pytest.mark.parametrize(("field", "value"), HUGE_INTS, ids=[f for f, _ in HUGE_INTS])
def test_huge_int_raises_value_error(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        CommandConfig(**{field: value})


# -- edge values are accepted, and never make a later call fail ------------------------------

EDGES: list[tuple[str, Any]] = [
    ("timeout", 86_400),
    ("timeout", 86_400.0),
    ("timeout", None),
    ("timeout", 5e-324),
    ("max_wait", 0),
    ("max_wait", 86_400),
    ("sleep_window", 0),
    ("sleep_window", 86_400),
    ("rolling_window", 0.001),
    ("rolling_window", 86_400),
    ("buckets", 1),
    ("buckets", 1000),
    ("error_percent_threshold", 1),
    ("error_percent_threshold", 100),
    ("error_percent_threshold", 33.3),
    ("max_concurrent_requests", 1),
    ("max_concurrent_requests", 10**6),
    ("request_volume_threshold", 0),
    ("ignore_exceptions", KeyError),
    ("ignore_exceptions", [KeyError, ValueError]),
    ("ignore_exceptions", frozenset({KeyError})),
    ("ignore_exceptions", ()),
]


@pytest.mark.parametrize(("field", "value"), EDGES, ids=_ids(EDGES))
def test_edge_values_are_accepted(reg: resilience.Registry, field: str, value: Any) -> None:
    config = CommandConfig(**{field: value})
    if field != "ignore_exceptions":
        assert getattr(config, field) == value
    reg.configure_command(NAME, **{field: value})
    assert reg.get_circuit(NAME).config == config


ACCEPTED_COMBOS: list[dict[str, Any]] = [
    {"timeout": 86_400},
    {"timeout": 86_400.0, "max_wait": 86_400, "sleep_window": 86_400, "rolling_window": 86_400},
    {"buckets": 1000, "rolling_window": 0.001},
    {"buckets": 1000, "rolling_window": 86_400},
    {"buckets": 1, "rolling_window": 0.001},
    {"max_wait": 0, "sleep_window": 0},
    {"max_wait": 5e-324, "max_concurrent_requests": 1},
    {"request_volume_threshold": 0, "error_percent_threshold": 100},
    {"max_concurrent_requests": 10**6, "request_volume_threshold": 10**6},
]


def _combo_id(combo: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in combo.items())


@pytest.mark.parametrize("combo", ACCEPTED_COMBOS, ids=[_combo_id(c) for c in ACCEPTED_COMBOS])
async def test_accepted_values_never_make_a_later_call_fail(
    reg: resilience.Registry,
    clock: FakeClock,
    metrics_registry: CollectorRegistry,
    combo: dict[str, Any],
) -> None:
    reg.configure_command(NAME, **combo)
    steps = [0.0, 1e-7, 0.0004, 0.001, 0.5, 3600.0, 86_399.0, 86_401.0, 1e6, 1e9]
    for step in steps:
        clock.advance(step)
        assert await reg.run(NAME, ok) == "ok"  # in this task
        assert await reg.run(NAME, ok_sync) == "ok"  # in a worker thread, awaited here
        assert await anyio.to_thread.run_sync(reg.run_sync, NAME, ok_sync) == "ok"  # sync
        with pytest.raises(Boom):
            await reg.run(NAME, _boom)
        reg.get_circuit(NAME).statistics()
    assert generate_latest(metrics_registry)
    assert calls_total(metrics_registry, NAME, "success") == 3 * len(steps)


async def _boom() -> str:
    raise Boom("down")


def test_timeout_86400_from_sync_code(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=86_400)
    ran_in: list[int] = []

    def fn() -> str:
        ran_in.append(threading.get_ident())
        return "ok"

    assert reg.run_sync(NAME, fn) == "ok"
    assert reg.command(NAME)(fn)() == "ok"
    assert threading.get_ident() not in ran_in  # a timeout: a worker thread


async def test_timeout_86400_from_async_code(reg: resilience.Registry) -> None:
    reg.configure_command(NAME, timeout=86_400)

    async def fn() -> str:
        await anyio.sleep(0)
        return "ok"

    assert await reg.run(NAME, fn) == "ok"
    assert await reg.command(NAME)(fn)() == "ok"
    assert await reg.run(NAME, ok_sync) == "ok"


async def test_buckets_1000_over_one_millisecond_survive_calls(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    reg.configure_command(
        NAME, buckets=1000, rolling_window=0.001, request_volume_threshold=3,
        error_percent_threshold=50, sleep_window=0,
    )
    for i in range(2000):
        clock.advance(1e-7 * (i % 17))
        if i % 3:
            assert await reg.run(NAME, ok) == "ok"
        else:
            try:
                await reg.run(NAME, _boom)
            except (Boom, resilience.CircuitOpenError):
                pass
    stats = reg.get_circuit(NAME).statistics()
    assert stats.requests >= 0


# -- unknown fields --------------------------------------------------------------------------------


def test_unknown_field_lists_the_known_fields(reg: resilience.Registry) -> None:
    for call in (
        lambda: reg.configure_command(NAME, timout=1.0),
        lambda: reg.command(NAME, timout=1.0),
    ):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert "timout" in message
        for field in FIELDS:
            assert field in message, (field, message)
    assert reg.get_circuit(NAME).config == CommandConfig()


def test_unknown_field_with_valid_ones_changes_nothing(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError, match="bogus"):
        reg.configure_command(NAME, timeout=2.0, bogus=1)
    assert reg.get_circuit(NAME).config == CommandConfig()


def test_unknown_field_in_the_constructor() -> None:
    with pytest.raises(TypeError, match="bogus"):
        CommandConfig(bogus=1)  # type: ignore[call-arg]


def test_configure_command_refuses_a_non_config_and_mixing(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError):
        reg.configure_command(NAME, {"timeout": 1.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reg.configure_command(NAME, CommandConfig(), timeout=1.0)
    with pytest.raises(TypeError):
        reg.configure([(NAME, CommandConfig())])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reg.configure({NAME: {"timeout": 1.0}})  # type: ignore[dict-item]
    assert reg.get_circuit(NAME).config == CommandConfig()


def test_configure_checks_every_entry_before_changing_any(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError):
        reg.configure(
            {"first": CommandConfig(timeout=2.0), "third": "not a config"}  # type: ignore[dict-item]
        )
    with pytest.raises(ValueError):
        reg.configure({"first": CommandConfig(timeout=2.0), "": CommandConfig()})
    assert reg.get_circuit("first").config == CommandConfig()


# -- names ---------------------------------------------------------------------------------------

BAD_NAMES: list[tuple[object, type[Exception]]] = [
    ("", ValueError),
    (None, TypeError),
    (3, TypeError),
    (b"x", TypeError),
    (["unhashable"], TypeError),
    ({"a": 1}, TypeError),
    ("a\udcff", ValueError),
    ("\ud800", ValueError),
]
BAD_NAME_IDS = ["empty", "None", "int", "bytes", "list", "dict", "lone-surrogate", "surrogate"]


def _api_calls(reg: resilience.Registry, name: Any) -> dict[str, Callable[[], object]]:
    return {
        "command": lambda: reg.command(name),
        "command-with-config": lambda: reg.command(name, timeout=2.0),
        "run_sync": lambda: reg.run_sync(name, ok_sync),
        "configure_command": lambda: reg.configure_command(name, timeout=2.0),
        "configure_command-config": lambda: reg.configure_command(name, CommandConfig()),
        "configure": lambda: reg.configure({name: CommandConfig()}),
        "get_circuit": lambda: reg.get_circuit(name),
    }


def _scrape_ok(reg: resilience.Registry, metrics_registry: CollectorRegistry) -> None:
    reg.configure_command(NAME, timeout=None)
    assert reg.run_sync(NAME, ok_sync) == "ok"
    text = generate_latest(metrics_registry).decode("utf-8")
    assert f'command="{NAME}"' in text


@pytest.mark.parametrize(("name", "error"), BAD_NAMES, ids=BAD_NAME_IDS)
def test_bad_names_are_refused_by_every_sync_entry_point(
    reg: resilience.Registry,
    metrics_registry: CollectorRegistry,
    name: object,
    error: type[Exception],
) -> None:
    for label, call in _api_calls(reg, name).items():
        if label == "configure" and isinstance(name, list | dict):
            continue  # an unhashable key cannot even be put in the mapping
        with pytest.raises(error):
            call()
    _scrape_ok(reg, metrics_registry)


@pytest.mark.parametrize(("name", "error"), BAD_NAMES, ids=BAD_NAME_IDS)
async def test_bad_names_are_refused_by_run(
    reg: resilience.Registry,
    metrics_registry: CollectorRegistry,
    name: Any,
    error: type[Exception],
) -> None:
    called = False

    async def fn() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(error):
        await reg.run(name, fn)
    with pytest.raises(error):
        await reg.run(name, ok_sync)
    with pytest.raises(error):
        await reg.run(name, fn, fallback=lambda exc: "fallback")
    assert not called
    assert await reg.run(NAME, ok) == "ok"
    _scrape_ok(reg, metrics_registry)


def test_module_level_functions_refuse_bad_names() -> None:
    for name, error in BAD_NAMES:
        with pytest.raises(error):
            resilience.command(name)  # type: ignore[arg-type]
        with pytest.raises(error):
            resilience.configure_command(name, timeout=2.0)  # type: ignore[arg-type]
        with pytest.raises(error):
            resilience.get_circuit(name)  # type: ignore[arg-type]
        with pytest.raises(error):
            resilience.run_sync(name, ok_sync)  # type: ignore[arg-type]
    generate_latest()  # the default exposition still works


def test_str_subclass_name_is_a_plain_name(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    class Name(str):
        pass

    reg.configure_command(Name(NAME), timeout=None)
    assert reg.run_sync(Name(NAME), ok_sync) == "ok"
    assert reg.get_circuit(NAME).statistics().successes == 1
    _scrape_ok(reg, metrics_registry)


# -- ignore_exceptions as a predicate ------------------------------------------------------------


def _mine(exc: Exception) -> bool:
    return isinstance(exc, KeyError) and exc.args == ("mine",)


MODES = ["run-async", "decorated-async", "run-plain", "run_sync", "run_sync-threaded"]


async def call_in_mode(
    reg: resilience.Registry,
    mode: str,
    fn_async: Callable[[], Awaitable[object]],
    fn_sync: Callable[[], object],
    fallback: Callable[[Exception], object] | None = None,
) -> object:
    """One call through NAME, from async code or (in a worker thread) from sync code."""
    if mode == "run-async":
        return await reg.run(NAME, fn_async, fallback=fallback)
    if mode == "decorated-async":
        return await reg.command(NAME, fallback=fallback)(fn_async)()
    if mode == "run-plain":
        return await reg.run(NAME, fn_sync, fallback=fallback)
    if mode in ("run_sync", "run_sync-threaded"):
        return await anyio.to_thread.run_sync(
            functools.partial(reg.run_sync, NAME, fn_sync, fallback=fallback)
        )
    raise AssertionError(mode)


def _setup_mode(reg: resilience.Registry, mode: str, **config: Any) -> None:
    timeout = None if mode == "run_sync" else 5.0
    reg.configure_command(NAME, timeout=timeout, **config)


def _raiser(exc: Exception) -> tuple[Callable[[], Awaitable[object]], Callable[[], object]]:
    async def fn_async() -> object:
        raise exc

    def fn_sync() -> object:
        raise exc

    return fn_async, fn_sync


def _returner(value: object) -> tuple[Callable[[], Awaitable[object]], Callable[[], object]]:
    async def fn_async() -> object:
        return value

    def fn_sync() -> object:
        return value

    return fn_async, fn_sync


@pytest.mark.parametrize("mode", MODES)
async def test_ignore_predicate_ignores_only_matching_instances(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, mode: str
) -> None:
    _setup_mode(reg, mode, ignore_exceptions=lambda e: isinstance(e, KeyError) and e.args == (
        "mine",
    ))
    fallback_got: list[Exception] = []

    def fallback(exc: Exception) -> str:
        fallback_got.append(exc)
        return "fallback"

    mine = KeyError("mine")
    with pytest.raises(KeyError) as info:
        await call_in_mode(reg, mode, *_raiser(mine), fallback=fallback)
    assert info.value is mine  # re-raised as is
    assert fallback_got == []  # no fallback
    assert stats_tuple(reg, NAME) == (0, 0, 0, 0, 0, 0, 0, 0)  # not in health
    assert calls_total(metrics_registry, NAME, "ignored") == 1
    assert calls_total(metrics_registry, NAME, "failure") == 0

    # another KeyError, and another type, are failures: fallback, health, metrics
    other_key = KeyError("other")
    assert await call_in_mode(reg, mode, *_raiser(other_key), fallback=fallback) == "fallback"
    assert fallback_got == [other_key]
    value_error = ValueError("mine")
    with pytest.raises(ValueError) as info2:
        await call_in_mode(reg, mode, *_raiser(value_error))
    assert info2.value is value_error
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures) == (2, 2)
    assert calls_total(metrics_registry, NAME, "failure") == 2
    assert calls_total(metrics_registry, NAME, "ignored") == 1
    assert fallbacks_total(metrics_registry, NAME, "success") == 1


def test_ignore_predicate_is_stored_as_given() -> None:
    config = CommandConfig(ignore_exceptions=_mine)
    assert config.ignore_exceptions is _mine


async def test_ignored_exceptions_never_trip(reg: resilience.Registry) -> None:
    reg.configure_command(
        NAME, ignore_exceptions=_mine, request_volume_threshold=2, timeout=None
    )
    for _ in range(10):
        with pytest.raises(KeyError):
            await reg.run(NAME, _raiser(KeyError("mine"))[0])
    assert reg.get_circuit(NAME).state is resilience.CircuitState.CLOSED


async def test_ignore_types_still_work(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(NAME, ignore_exceptions=[KeyError])
    err = KeyError("any")
    with pytest.raises(KeyError) as info:
        await reg.run(NAME, _raiser(err)[0], fallback=lambda e: "fallback")
    assert info.value is err
    assert calls_total(metrics_registry, NAME, "ignored") == 1


# -- failed_if -----------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int) -> None:
        self.status = status


def _is_5xx(value: object) -> bool:
    return isinstance(value, Response) and value.status >= 500


@pytest.mark.parametrize("mode", MODES)
async def test_failed_result_with_a_fallback(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, mode: str
) -> None:
    _setup_mode(reg, mode, failed_if=_is_5xx)
    got: list[Exception] = []

    def fallback(exc: Exception) -> str:
        got.append(exc)
        return "fallback"

    bad = Response(503)
    assert await call_in_mode(reg, mode, *_returner(bad), fallback=fallback) == "fallback"
    assert len(got) == 1
    error = got[0]
    assert isinstance(error, FailedResultError)
    assert isinstance(error, resilience.CommandError)
    assert error.result is bad
    assert error.command == NAME
    assert NAME in str(error)
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures, stats.successes) == (1, 1, 0)
    assert stats.fallback_successes == 1
    assert calls_total(metrics_registry, NAME, "failure") == 1
    assert calls_total(metrics_registry, NAME, "success") == 0
    assert fallbacks_total(metrics_registry, NAME, "success") == 1

    good = Response(200)
    assert await call_in_mode(reg, mode, *_returner(good), fallback=fallback) is good
    assert len(got) == 1
    assert calls_total(metrics_registry, NAME, "success") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_failed_result_without_a_fallback_is_returned_unchanged(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, mode: str
) -> None:
    _setup_mode(reg, mode, failed_if=_is_5xx)
    bad = Response(500)
    assert await call_in_mode(reg, mode, *_returner(bad)) is bad
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures) == (1, 1)
    assert all_calls(metrics_registry, NAME)["failure"] == 1
    assert all_calls(metrics_registry, NAME)["success"] == 0


class PredicateBug(Exception):
    pass


@pytest.mark.parametrize("with_fallback", [False, True], ids=["no-fallback", "fallback"])
@pytest.mark.parametrize("mode", MODES)
async def test_raising_failed_if_propagates_and_counts_as_failure(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, mode: str,
    with_fallback: bool,
) -> None:
    bug = PredicateBug("predicate bug")

    def predicate(value: object) -> bool:
        raise bug

    _setup_mode(reg, mode, failed_if=predicate)
    got: list[Exception] = []

    def fallback(exc: Exception) -> str:
        got.append(exc)
        return "fallback"

    with pytest.raises(PredicateBug) as info:
        await call_in_mode(
            reg, mode, *_returner("value"), fallback=fallback if with_fallback else None
        )
    assert info.value is bug
    assert got == []
    stats = reg.get_circuit(NAME).statistics()
    assert (stats.requests, stats.failures, stats.successes) == (1, 1, 0)
    assert calls_total(metrics_registry, NAME, "failure") == 1
    assert calls_total(metrics_registry, NAME, "success") == 0


async def test_failed_results_trip_the_circuit(
    reg: resilience.Registry, metrics_registry: CollectorRegistry
) -> None:
    reg.configure_command(
        NAME, failed_if=_is_5xx, request_volume_threshold=4, error_percent_threshold=50
    )
    bad = Response(502)
    for _ in range(4):
        assert await reg.run(NAME, _returner(bad)[0]) is bad
    assert reg.get_circuit(NAME).state is resilience.CircuitState.OPEN
    with pytest.raises(resilience.CircuitOpenError):
        await reg.run(NAME, ok)


async def test_failed_if_sees_the_returned_value(reg: resilience.Registry) -> None:
    seen: list[object] = []

    def predicate(value: object) -> bool:
        seen.append(value)
        return False

    reg.configure_command(NAME, failed_if=predicate)
    value = object()
    assert await reg.run(NAME, _returner(value)[0]) is value
    assert seen == [value]


async def test_failed_if_not_called_for_exceptions(reg: resilience.Registry) -> None:
    seen: list[object] = []

    def predicate(value: object) -> bool:
        seen.append(value)
        return True

    reg.configure_command(NAME, failed_if=predicate)
    with pytest.raises(Boom):
        await reg.run(NAME, _boom)
    assert seen == []


class FallbackBug(Exception):
    pass


@pytest.mark.parametrize("mode", MODES)
async def test_fallback_error_on_a_failed_result_chains_to_failed_result_error(
    reg: resilience.Registry, metrics_registry: CollectorRegistry, mode: str
) -> None:
    _setup_mode(reg, mode, failed_if=_is_5xx)
    bug = FallbackBug("fallback broke")

    def fallback(exc: Exception) -> str:
        raise bug

    bad = Response(500)
    with pytest.raises(FallbackBug) as info:
        await call_in_mode(reg, mode, *_returner(bad), fallback=fallback)
    assert info.value is bug
    context = info.value.__context__
    assert isinstance(context, FailedResultError)
    assert context.result is bad
    assert type(context).__module__ == "resilience"
    assert fallbacks_total(metrics_registry, NAME, "failure") == 1
    assert calls_total(metrics_registry, NAME, "failure") == 1


async def test_ignore_predicate_never_sees_a_cancellation(reg: resilience.Registry) -> None:
    seen: list[BaseException] = []

    def predicate(exc: Exception) -> bool:
        seen.append(exc)
        return False

    reg.configure_command(NAME, ignore_exceptions=predicate, timeout=None)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await reg.run(NAME, anyio.sleep_forever)
    assert scope.cancelled_caught
    assert seen == []
    err = KeyError("x")
    with pytest.raises(KeyError):
        await reg.run(NAME, _raiser(err)[0])
    assert seen == [err]
