"""Events (docs/events.md): ``subscribe`` and the ``resilience.circuit`` log.

A ``StateChange(command, old, new, statistics, reason)`` for every circuit transition (trip,
trial admitted, trial success/failure, forced open/closed, unforced, flush), delivered once,
after the state change is complete, outside every lock, in the thread/task that caused it;
a failing subscriber is logged on ``resilience.events`` and harms nobody. Every transition is
logged on ``resilience.circuit`` (WARNING when a circuit opens, INFO otherwise). Sleep windows
run on the FakeClock.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest
from test_command_helpers import (
    BREAKER,
    SLEEP,
    Boom,
    FakeClock,
    Hold,
    breaker_state,
    failing,
    ok,
    ok_sync,
    run_outcome,
    setup_breaker,
    spawn,
    trip,
)

import resilience
from resilience import CircuitOpenError, CircuitState, CircuitStatistics, StateChange

NAME = BREAKER


class Recorder:
    """A subscriber that keeps every StateChange, and what the circuit looked like then."""

    def __init__(self, reg: resilience.Registry) -> None:
        self.reg = reg
        self.events: list[StateChange] = []
        self.states_seen: list[tuple[str, str]] = []  # (event.new, get_circuit().state)
        self.threads: list[int] = []
        self.tasks: list[int | None] = []

    def __call__(self, event: resilience.Event) -> None:
        if not isinstance(event, StateChange):
            return
        self.events.append(event)
        self.states_seen.append((event.new, str(self.reg.get_circuit(event.command).state)))
        self.threads.append(threading.get_ident())
        try:
            self.tasks.append(anyio.get_current_task().id)
        except Exception:  # not in a task (sync code): no task to record
            self.tasks.append(None)

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(e.old, e.new, e.reason) for e in self.events]


@pytest.fixture
def rec(reg: resilience.Registry) -> Iterator[Recorder]:
    setup_breaker(reg)
    recorder = Recorder(reg)
    unsubscribe = reg.subscribe(recorder)
    yield recorder
    unsubscribe()


def assert_consistent(rec: Recorder) -> None:
    """Inside each callback the circuit already was in the event's new state."""
    assert [new for new, _ in rec.states_seen] == [seen for _, seen in rec.states_seen]


# -- one event per transition ----------------------------------------------------------------


async def test_trip_is_one_event_closed_to_open_tripped(
    reg: resilience.Registry, rec: Recorder
) -> None:
    await trip(reg)
    assert rec.transitions() == [("closed", "open", "tripped")]
    event = rec.events[0]
    assert event.command == NAME
    assert isinstance(event.statistics, CircuitStatistics)
    assert event.statistics.requests == 4
    assert event.statistics.failures == 4
    assert event.statistics.error_percent == 100.0
    assert_consistent(rec)
    # short-circuited calls are no transitions
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            await reg.run(NAME, ok)
    assert len(rec.events) == 1


async def test_event_is_a_frozen_dataclass(reg: resilience.Registry, rec: Recorder) -> None:
    await trip(reg)
    event = rec.events[0]
    assert dataclasses.is_dataclass(event)
    assert {f.name for f in dataclasses.fields(event)} == {
        "command", "old", "new", "statistics", "reason",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.new = "closed"  # type: ignore[misc]


async def test_trial_admitted_then_success(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    await trip(reg)
    clock.advance(SLEEP)
    seen_inside: list[tuple[list[tuple[str, str, str]], CircuitState]] = []

    async def trial() -> str:
        # the "trial" event was delivered before the trial function runs
        seen_inside.append((rec.transitions(), reg.get_circuit(NAME).state))
        return "ok"

    assert await reg.run(NAME, trial) == "ok"
    assert seen_inside == [
        ([("closed", "open", "tripped"), ("open", "half_open", "trial")], CircuitState.HALF_OPEN)
    ]
    assert rec.transitions() == [
        ("closed", "open", "tripped"),
        ("open", "half_open", "trial"),
        ("half_open", "closed", "trial_succeeded"),
    ]
    assert_consistent(rec)
    assert breaker_state(reg) is CircuitState.CLOSED


async def test_trial_failure_reopens(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    await trip(reg)
    clock.advance(SLEEP)
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    assert rec.transitions() == [
        ("closed", "open", "tripped"),
        ("open", "half_open", "trial"),
        ("half_open", "open", "trial_failed"),
    ]
    assert_consistent(rec)
    # a second cycle: one more trial event, then success
    clock.advance(SLEEP)
    assert await reg.run(NAME, ok) == "ok"
    assert rec.transitions()[3:] == [
        ("open", "half_open", "trial"),
        ("half_open", "closed", "trial_succeeded"),
    ]
    assert_consistent(rec)


def test_trial_events_from_sync_code(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    reg.configure_command(NAME, timeout=None)

    def boom() -> str:
        raise Boom("down")

    for _ in range(4):
        with pytest.raises(Boom):
            reg.run_sync(NAME, boom)
    clock.advance(SLEEP)
    with pytest.raises(Boom):
        reg.run_sync(NAME, boom)
    clock.advance(SLEEP)
    assert reg.run_sync(NAME, ok_sync) == "ok"
    assert rec.transitions() == [
        ("closed", "open", "tripped"),
        ("open", "half_open", "trial"),
        ("half_open", "open", "trial_failed"),
        ("open", "half_open", "trial"),
        ("half_open", "closed", "trial_succeeded"),
    ]
    assert_consistent(rec)


async def test_short_circuits_during_a_trial_are_no_events(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    await trip(reg)
    clock.advance(SLEEP)
    hold = Hold(value="trial")
    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        for _ in range(3):
            with pytest.raises(CircuitOpenError):
                await reg.run(NAME, ok)
        assert rec.transitions()[-1] == ("open", "half_open", "trial")
        assert len(rec.events) == 2
        hold.release.set()
    assert pending.value == "trial"
    assert len(rec.events) == 3
    assert_consistent(rec)


async def test_forced_open_and_unforced(reg: resilience.Registry, rec: Recorder) -> None:
    reg.configure_command(NAME, force_open=True)
    assert rec.transitions() == [("closed", "open", "forced_open")]
    assert_consistent(rec)
    # configuring it again, or changing another field, is no transition
    reg.configure_command(NAME, force_open=True)
    reg.configure_command(NAME, sleep_window=SLEEP + 1)
    assert len(rec.events) == 1
    with pytest.raises(CircuitOpenError):
        await reg.run(NAME, ok)
    reg.configure_command(NAME, force_open=False)
    assert rec.transitions() == [
        ("closed", "open", "forced_open"),
        ("open", "closed", "unforced"),
    ]
    assert_consistent(rec)
    assert await reg.run(NAME, ok) == "ok"
    assert len(rec.events) == 2


async def test_force_closed_closes_an_open_circuit(
    reg: resilience.Registry, rec: Recorder
) -> None:
    await trip(reg)
    reg.configure_command(NAME, force_closed=True)
    assert rec.transitions() == [
        ("closed", "open", "tripped"),
        ("open", "closed", "forced_closed"),
    ]
    assert_consistent(rec)
    assert breaker_state(reg) is CircuitState.CLOSED
    # force_closed: failures never trip it again, so no more events
    for _ in range(8):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    assert len(rec.events) == 2


def test_force_closed_on_a_closed_circuit_is_no_event(
    reg: resilience.Registry, rec: Recorder
) -> None:
    reg.configure_command(NAME, force_closed=True)
    reg.configure_command(NAME, force_closed=False)
    assert rec.events == []


async def test_flush_of_an_open_circuit(reg: resilience.Registry, rec: Recorder) -> None:
    await trip(reg)
    reg.flush()
    assert rec.transitions() == [("closed", "open", "tripped"), ("open", "closed", "flush")]
    assert_consistent(rec)
    assert rec.events[1].command == NAME
    # flushing a closed circuit is no transition
    reg.flush()
    assert len(rec.events) == 2


async def test_flush_of_a_half_open_circuit(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    await trip(reg)
    clock.advance(SLEEP)
    hold = Hold(value="stale trial")
    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        reg.flush()
        hold.release.set()
    assert pending.value == "stale trial"
    # the trial finished after the flush: stale, so no trial_succeeded event
    assert rec.transitions() == [
        ("closed", "open", "tripped"),
        ("open", "half_open", "trial"),
        ("half_open", "closed", "flush"),
    ]


async def test_each_registry_delivers_only_its_own_events(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    other = resilience.Registry(metrics_registry=None, clock=clock)
    other_events: list[resilience.Event] = []
    unsubscribe = other.subscribe(other_events.append)
    try:
        await trip(reg)
        assert other_events == []
    finally:
        unsubscribe()


# -- delivery: after the change, outside every lock, in the caller's thread/task -------------


def _finishes_in_another_thread(fn: Callable[[], object], timeout: float = 5.0) -> bool:
    """Run ``fn`` in a fresh thread; False if it is still blocked after ``timeout``."""
    done = threading.Event()

    def target() -> None:
        try:
            fn()
        finally:
            done.set()

    threading.Thread(target=target, daemon=True).start()
    return done.wait(timeout)


async def test_callback_runs_outside_every_lock(reg: resilience.Registry) -> None:
    setup_breaker(reg)
    reg.configure_command("other", timeout=None)
    results: list[object] = []

    def callback(event: resilience.Event) -> None:
        assert isinstance(event, StateChange)
        # another thread can read this command's statistics and run it meanwhile: our lock
        # is not held (if it were, we must not try the same from this thread: it would hang)
        free = _finishes_in_another_thread(lambda: reg.get_circuit(NAME).statistics())
        results.append(free)
        if not free:
            return
        results.append(reg.get_circuit(event.command).statistics().requests)
        results.append(reg.run_sync("other", ok_sync))
        try:
            reg.run_sync(NAME, ok_sync)  # the same command, from inside its own event
        except CircuitOpenError:
            results.append("short-circuited")

    unsubscribe = reg.subscribe(callback)
    try:
        with anyio.fail_after(20):
            await trip(reg)
    finally:
        unsubscribe()
    assert results == [True, 4, "ok", "short-circuited"]


def test_callback_outside_lock_from_sync_caller(reg: resilience.Registry) -> None:
    setup_breaker(reg, timeout=None)
    results: list[object] = []

    def callback(event: resilience.Event) -> None:
        free = _finishes_in_another_thread(lambda: reg.get_circuit(NAME).statistics())
        results.append(free)
        if free:
            results.append(reg.get_circuit(NAME).statistics().failures)

    def boom() -> str:
        raise Boom("down")

    unsubscribe = reg.subscribe(callback)
    try:
        for _ in range(4):
            with pytest.raises(Boom):
                reg.run_sync(NAME, boom)
    finally:
        unsubscribe()
    assert results == [True, 4]


def test_callback_outside_lock_on_configure_and_flush(
    reg: resilience.Registry, rec: Recorder
) -> None:
    results: list[bool] = []

    def callback(event: resilience.Event) -> None:
        results.append(_finishes_in_another_thread(lambda: reg.get_circuit(NAME).statistics()))

    unsubscribe = reg.subscribe(callback)
    try:
        reg.configure_command(NAME, force_open=True)
        reg.configure_command(NAME, force_open=False)
        reg.configure_command(NAME, force_open=True)
        reg.flush()  # forced open stays open: no event
        reg.configure_command(NAME, force_open=False)
    finally:
        unsubscribe()
    assert results == [True, True, True, True]
    assert [r for _, _, r in rec.transitions()] == [
        "forced_open", "unforced", "forced_open", "unforced",
    ]


def test_callback_runs_in_the_worker_thread_that_caused_it(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    reg.configure_command(NAME, timeout=None)
    idents: dict[str, int] = {}
    errors: list[BaseException] = []

    def boom() -> str:
        raise Boom("down")

    def worker(label: str, fn: Callable[[], str], count: int) -> None:
        idents[label] = threading.get_ident()
        for _ in range(count):
            try:
                reg.run_sync(NAME, fn)
            except Boom:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    t1 = threading.Thread(target=worker, args=("trip", boom, 4))
    t1.start()
    t1.join(10)
    clock.advance(SLEEP)
    t2 = threading.Thread(target=worker, args=("trial", ok_sync, 1))
    t2.start()
    t2.join(10)
    assert errors == []
    assert rec.transitions() == [
        ("closed", "open", "tripped"),
        ("open", "half_open", "trial"),
        ("half_open", "closed", "trial_succeeded"),
    ]
    assert rec.threads == [idents["trip"], idents["trial"], idents["trial"]]
    assert threading.get_ident() not in rec.threads


def test_callback_runs_in_the_caller_thread_with_a_timeout(
    reg: resilience.Registry, rec: Recorder
) -> None:
    """With a timeout the function runs in a pool thread; the caller records the outcome."""
    reg.configure_command(NAME, timeout=5.0)
    fn_threads: list[int] = []

    def boom() -> str:
        fn_threads.append(threading.get_ident())
        raise Boom("down")

    for _ in range(4):
        with pytest.raises(Boom):
            reg.run_sync(NAME, boom)
    assert threading.get_ident() not in fn_threads
    assert rec.threads == [threading.get_ident()]


async def test_callback_runs_in_the_calling_task(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    tasks: list[int] = []

    async def caller(fn: Callable[[], object], count: int) -> None:
        tasks.append(anyio.get_current_task().id)
        for _ in range(count):
            try:
                await reg.run(NAME, fn)
            except Boom:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, failing(Boom("down")), 4)
    clock.advance(SLEEP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, ok, 1)
    assert len(rec.events) == 3
    assert rec.tasks == [tasks[0], tasks[1], tasks[1]]
    assert rec.threads == [threading.get_ident()] * 3


async def test_callback_from_a_plain_callable_run_is_in_the_calling_task(
    reg: resilience.Registry, rec: Recorder
) -> None:
    def boom() -> str:
        raise Boom("down")

    async def caller() -> None:
        for _ in range(4):
            with pytest.raises(Boom):
                await reg.run(NAME, boom)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
    assert len(rec.events) == 1
    assert rec.threads == [threading.get_ident()]
    assert rec.tasks[0] is not None


# -- failing subscribers, unsubscribe, no subscriber -----------------------------------------


class SubscriberBug(Exception):
    pass


async def test_raising_subscriber_is_logged_and_harms_nobody(
    reg: resilience.Registry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    setup_breaker(reg)
    calls: list[str] = []

    def bad(event: resilience.Event) -> None:
        calls.append("bad")
        raise SubscriberBug("subscriber bug")

    good = Recorder(reg)
    unsubscribe_bad = reg.subscribe(bad)
    unsubscribe_good = reg.subscribe(good)
    caplog.set_level(logging.DEBUG, logger="resilience.events")
    try:
        errors: list[Exception] = []
        for _ in range(4):  # the 4th call trips: its own Boom reaches the caller
            try:
                await run_outcome(reg, NAME, "failure")
            except Exception as exc:
                errors.append(exc)
        assert [type(e) for e in errors] == [Boom] * 4
        clock.advance(SLEEP)
        assert await reg.run(NAME, ok) == "ok"  # trial + trial success, both delivered
        reg.configure_command(NAME, force_open=True)
        reg.flush()
        reg.configure_command(NAME, force_open=False)
    finally:
        unsubscribe_bad()
        unsubscribe_good()
    assert [r for _, _, r in good.transitions()] == [
        "tripped", "trial", "trial_succeeded", "forced_open", "unforced",
    ]
    assert calls == ["bad"] * 5
    logged = [r for r in caplog.records if r.name == "resilience.events"]
    assert len(logged) == 5
    for record in logged:
        assert record.levelno >= logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], SubscriberBug)


def test_raising_subscriber_from_sync_code(
    reg: resilience.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    setup_breaker(reg, timeout=None)

    def bad(event: resilience.Event) -> None:
        raise SubscriberBug("subscriber bug")

    good = Recorder(reg)
    reg.subscribe(bad)
    reg.subscribe(good)
    caplog.set_level(logging.DEBUG, logger="resilience.events")

    def boom() -> str:
        raise Boom("down")

    for _ in range(4):
        with pytest.raises(Boom):
            reg.run_sync(NAME, boom)
    with pytest.raises(CircuitOpenError):
        reg.run_sync(NAME, ok_sync)
    assert good.transitions() == [("closed", "open", "tripped")]
    assert len([r for r in caplog.records if r.name == "resilience.events"]) == 1


async def test_unsubscribe_stops_delivery(reg: resilience.Registry, clock: FakeClock) -> None:
    setup_breaker(reg)
    first, second = Recorder(reg), Recorder(reg)
    unsubscribe_first = reg.subscribe(first)
    unsubscribe_second = reg.subscribe(second)
    await trip(reg)
    unsubscribe_first()
    clock.advance(SLEEP)
    assert await reg.run(NAME, ok) == "ok"
    assert len(first.events) == 1
    assert len(second.events) == 3
    unsubscribe_second()
    await trip(reg)
    reg.flush()
    assert len(first.events) == 1
    assert len(second.events) == 3


async def test_subscribing_twice_delivers_twice(reg: resilience.Registry) -> None:
    setup_breaker(reg)
    seen: list[str] = []

    def callback(event: resilience.Event) -> None:
        assert isinstance(event, StateChange)
        seen.append(event.reason)

    unsub_a = reg.subscribe(callback)
    unsub_b = reg.subscribe(callback)
    await trip(reg)
    assert seen == ["tripped", "tripped"]
    unsub_a()
    reg.flush()
    assert seen == ["tripped", "tripped", "flush"]
    unsub_b()


async def test_no_subscriber_nothing_breaks(reg: resilience.Registry, clock: FakeClock) -> None:
    setup_breaker(reg)
    await trip(reg)
    clock.advance(SLEEP)
    with pytest.raises(Boom):
        await run_outcome(reg, NAME, "failure")
    clock.advance(SLEEP)
    assert await reg.run(NAME, ok) == "ok"
    reg.configure_command(NAME, force_open=True)
    reg.configure_command(NAME, force_open=False)
    await trip(reg)
    reg.configure_command(NAME, force_closed=True)
    reg.configure_command(NAME, force_closed=False)
    await trip(reg)
    reg.flush()
    assert breaker_state(reg) is CircuitState.CLOSED


def test_subscribe_refuses_a_non_callable(reg: resilience.Registry) -> None:
    with pytest.raises(TypeError):
        reg.subscribe("not callable")  # type: ignore[arg-type]


async def test_module_level_subscribe() -> None:
    name = f"events-default-{uuid.uuid4().hex}"
    seen: list[tuple[str, str, str, str]] = []

    def callback(event: resilience.Event) -> None:
        if isinstance(event, StateChange) and event.command == name:
            seen.append((event.command, event.old, event.new, event.reason))

    unsubscribe = resilience.subscribe(callback)
    try:
        resilience.configure_command(name, force_open=True)
        with pytest.raises(CircuitOpenError):
            await resilience.run(name, ok)
        resilience.configure_command(name, force_open=False)
        assert await resilience.run(name, ok) == "ok"
    finally:
        unsubscribe()
    resilience.configure_command(name, force_open=True)  # after unsubscribing: not seen
    resilience.configure_command(name, force_open=False)
    assert seen == [
        (name, "closed", "open", "forced_open"),
        (name, "open", "closed", "unforced"),
    ]


# -- logging on resilience.circuit -------------------------------------------------------------


def circuit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "resilience.circuit"]


async def test_trip_is_logged_as_warning_with_numbers(
    reg: resilience.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    # distinctive numbers: trips at >= 40 % errors over >= 5 requests; 3 of 5 fail (60 %)
    setup_breaker(reg, request_volume_threshold=5, error_percent_threshold=40)
    caplog.set_level(logging.DEBUG, logger="resilience.circuit")
    for _ in range(2):
        await run_outcome(reg, NAME, "success")
    for _ in range(3):
        with pytest.raises(Boom):
            await run_outcome(reg, NAME, "failure")
    assert breaker_state(reg) is CircuitState.OPEN
    records = circuit_records(caplog)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert NAME in message
    assert re.search(r"\b60(\.0+)?\s*%", message), message  # the error percentage
    assert re.search(r"\b40(\.0+)?\s*%", message), message  # the error threshold
    numbers = re.findall(r"\d+(?:\.\d+)?", message)
    assert numbers.count("5") >= 2, message  # request count and volume threshold


async def test_transitions_are_logged_at_their_levels(
    reg: resilience.Registry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    setup_breaker(reg)
    caplog.set_level(logging.DEBUG, logger="resilience.circuit")
    await trip(reg)  # closed -> open
    clock.advance(SLEEP)
    with pytest.raises(Boom):  # open -> half_open -> open
        await run_outcome(reg, NAME, "failure")
    clock.advance(SLEEP)
    assert await reg.run(NAME, ok) == "ok"  # open -> half_open -> closed
    reg.configure_command(NAME, force_open=True)  # closed -> open
    reg.configure_command(NAME, force_open=False)  # open -> closed
    await trip(reg)
    reg.configure_command(NAME, force_closed=True)  # open -> closed
    reg.configure_command(NAME, force_closed=False)
    await trip(reg)
    reg.flush()  # open -> closed
    levels = [r.levelno for r in circuit_records(caplog)]
    W, I = logging.WARNING, logging.INFO  # noqa: E741
    assert levels == [W, I, W, I, I, W, I, W, I, W, I]
    for record in circuit_records(caplog):
        assert NAME in record.getMessage()
    # INFO messages say where the circuit went
    infos = [r.getMessage() for r in circuit_records(caplog) if r.levelno == I]
    assert "half_open" in infos[0]
    assert "closed" in infos[-1]


def test_logging_and_events_agree(
    reg: resilience.Registry, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience.circuit")
    reg.configure_command(NAME, force_open=True)
    reg.configure_command(NAME, force_open=False)
    records = circuit_records(caplog)
    assert len(records) == len(rec.events) == 2
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]


def test_state_unchanged_by_a_raising_subscriber_during_flush(
    reg: resilience.Registry, clock: FakeClock
) -> None:
    setup_breaker(reg, force_open=True)

    def bad(event: resilience.Event) -> None:
        raise SubscriberBug("bug")

    reg.subscribe(bad)
    reg.configure_command(NAME, force_open=False)
    assert breaker_state(reg) is CircuitState.CLOSED
    reg.flush()
    assert breaker_state(reg) is CircuitState.CLOSED


# -- other ways to trip or move a circuit ------------------------------------------------------


async def test_trip_by_timeouts(reg: resilience.Registry, rec: Recorder) -> None:
    reg.configure_command(NAME, timeout=0.01)
    for _ in range(4):
        with pytest.raises(resilience.CommandTimeoutError):
            await reg.run(NAME, anyio.sleep_forever)
    assert rec.transitions() == [("closed", "open", "tripped")]
    assert rec.events[0].statistics.timeouts == 4
    assert_consistent(rec)


async def test_trip_by_rejections(reg: resilience.Registry, rec: Recorder) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        for _ in range(4):
            with pytest.raises(resilience.MaxConcurrencyError):
                await reg.run(NAME, ok)
        assert rec.transitions() == [("closed", "open", "tripped")]
        assert rec.events[0].statistics.rejections == 4
        assert rec.tasks[0] == anyio.get_current_task().id
        hold.release.set()
    assert pending.value == "held"
    assert len(rec.events) == 1  # the stale success does not close it
    assert_consistent(rec)


async def test_trip_by_failed_results(reg: resilience.Registry, rec: Recorder) -> None:
    reg.configure_command(NAME, failed_if=lambda value: value == "bad")

    async def bad() -> str:
        return "bad"

    for _ in range(4):
        assert await reg.run(NAME, bad) == "bad"
    assert rec.transitions() == [("closed", "open", "tripped")]


async def test_rejected_trial_keeps_half_open_without_more_events(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    reg.configure_command(NAME, max_concurrent_requests=1)
    hold = Hold()
    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: reg.run(NAME, hold.fn))  # closed: holds the only slot
        await hold.entered.wait()
        for _ in range(4):  # rejections trip it
            with pytest.raises(resilience.MaxConcurrencyError):
                await reg.run(NAME, ok)
        clock.advance(SLEEP)
        with pytest.raises(resilience.MaxConcurrencyError):  # the trial finds no slot
            await reg.run(NAME, ok)
        assert rec.transitions() == [
            ("closed", "open", "tripped"),
            ("open", "half_open", "trial"),
        ]
        assert reg.get_circuit(NAME).state is CircuitState.HALF_OPEN
        hold.release.set()
    assert pending.value == "held"
    assert len(rec.events) == 2  # the stale success changes nothing
    assert await reg.run(NAME, ok) == "ok"  # the next call may trial: already half-open
    assert rec.transitions()[2:] == [("half_open", "closed", "trial_succeeded")]
    assert_consistent(rec)


async def test_force_open_during_a_trial(
    reg: resilience.Registry, rec: Recorder, clock: FakeClock
) -> None:
    await trip(reg)
    clock.advance(SLEEP)
    hold = Hold(value="trial")
    async with anyio.create_task_group() as tg:
        pending = spawn(tg, lambda: reg.run(NAME, hold.fn))
        await hold.entered.wait()
        reg.configure_command(NAME, force_open=True)
        assert rec.transitions()[-1] == ("half_open", "open", "forced_open")
        hold.release.set()
    assert pending.value == "trial"
    assert reg.get_circuit(NAME).state is CircuitState.OPEN  # still forced
    assert_consistent(rec)
    reg.configure_command(NAME, force_open=False)
    assert rec.transitions()[-1][1] == str(reg.get_circuit(NAME).state)
    assert_consistent(rec)


def test_configure_mapping_publishes_events(reg: resilience.Registry, rec: Recorder) -> None:
    reg.configure({NAME: resilience.CommandConfig(force_open=True)})
    assert rec.transitions() == [("closed", "open", "forced_open")]
    reg.configure({NAME: resilience.CommandConfig()})
    assert rec.transitions() == [("closed", "open", "forced_open"), ("open", "closed", "unforced")]
    assert_consistent(rec)


def test_force_open_and_force_closed_together_stay_open(
    reg: resilience.Registry, rec: Recorder
) -> None:
    reg.configure_command(NAME, force_open=True, force_closed=True)  # force_open wins
    assert reg.get_circuit(NAME).state is CircuitState.OPEN
    assert rec.transitions() == [("closed", "open", "forced_open")]
    assert_consistent(rec)
    reg.configure_command(NAME, force_open=False)
    assert reg.get_circuit(NAME).state is CircuitState.CLOSED
    assert len(rec.events) == 2
    assert rec.transitions()[-1][:2] == ("open", "closed")


def test_exactly_once_under_racing_threads(reg: resilience.Registry, clock: FakeClock) -> None:
    """Many threads completing the trip (and racing for the trial) still give one event each."""
    reg.configure_command(
        NAME, timeout=None, request_volume_threshold=20, error_percent_threshold=50,
        sleep_window=SLEEP, max_concurrent_requests=100,
    )
    seen: list[tuple[str, str, str]] = []
    seen_lock = threading.Lock()

    def callback(event: resilience.Event) -> None:
        assert isinstance(event, StateChange)
        with seen_lock:
            seen.append((event.old, event.new, event.reason))

    reg.subscribe(callback)

    def boom() -> str:
        raise Boom("down")

    def race(fn: Callable[[], str], calls: int) -> None:
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait(10)
            for _ in range(calls):
                try:
                    reg.run_sync(NAME, fn)
                except (Boom, CircuitOpenError):
                    pass

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    race(boom, 25)
    assert seen == [("closed", "open", "tripped")]
    clock.advance(SLEEP)
    race(ok_sync, 25)
    assert seen == [
        ("closed", "open", "tripped"),
        ("open", "half_open", "trial"),
        ("half_open", "closed", "trial_succeeded"),
    ]
