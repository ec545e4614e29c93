"""Hypothesis stateful test: one command driven through random steps against a model.

The model is a direct transcription of the breaker rules in docs/commands.md (trip condition,
sleep window, single trial, generations, what counts in health). Each rule runs its async
part with ``anyio.run`` on the machine's backend; the machine runs once per backend.
Statistics are checked exactly while the circuit is closed; the few places where the
contract leaves a choice (whether a failed trial's own outcome lands in the window, whether
the successful trial is counted after the reset) are bounded, not guessed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry
from test_command_helpers import Boom, Caller, FakeClock, Hold, all_calls, spawn, state_gauge

import resilience
from resilience import CircuitOpenError, CircuitState, CommandTimeoutError, MaxConcurrencyError

NAME = "machine"
SLEEP = 5.0
# Sums of these steps (in tenths: 7a + 13b + 31c + 62d) never equal SLEEP exactly, so the
# model never depends on whether "has passed" means > or >=.
STEPS = (0.7, 1.3, 3.1, 6.2)
FIELDS = (
    "successes", "failures", "timeouts", "rejections", "short_circuits",
    "fallback_successes", "fallback_failures",
)
HEALTH = {"success": "successes", "failure": "failures", "timeout": "timeouts",
          "rejected": "rejections"}


class Model:
    """The breaker (docs/commands.md), with [lo, hi] bounds on each rolling statistic."""

    def __init__(self, volume: int, percent: int) -> None:
        self.volume = volume
        self.percent = percent
        self.open = False
        self.opened_at = 0.0
        self.gen = 0
        self.trial = False
        self.pin_successes = False
        self.stats: dict[str, list[int]] = {f: [0, 0] for f in FIELDS}
        self.lifetime: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()

    def elapsed(self, now: float) -> bool:
        return now - self.opened_at >= SLEEP

    def bump(self, field: str, certain: bool) -> None:
        lo_hi = self.stats[field]
        lo_hi[1] += 1
        if certain:
            lo_hi[0] += 1

    def reset(self) -> None:
        self.open = False
        self.trial = False
        self.gen += 1
        self.stats = {f: [0, 0] for f in FIELDS}

    def admit(self, now: float) -> tuple[str, int, bool]:
        """("run" | "short", generation, is_trial) for a call arriving now."""
        if not self.open:
            return "run", self.gen, False
        if not self.trial and self.elapsed(now):
            self.trial = True
            return "run", self.gen, True
        return "short", self.gen, False

    def short(self) -> None:
        self.lifetime["short_circuited"] += 1
        self.bump("short_circuits", certain=True)

    def fallback(self, admitted_gen: int) -> None:
        self.fallbacks["success"] += 1
        self.bump("fallback_successes", certain=admitted_gen == self.gen)

    def finish(self, now: float, gen: int, trial: bool, outcome: str) -> None:
        self.lifetime[outcome] += 1
        if trial:
            self.trial = False  # the permit comes back whatever happened
            if outcome == "success":
                self.reset()
                self.pin_successes = True  # counted after the reset or not: 0 or 1
                self.stats["successes"] = [0, 1]
            elif outcome in HEALTH:
                self.bump(HEALTH[outcome], certain=False)
                if outcome != "rejected":
                    self.opened_at = now
                    self.gen += 1
            return
        if outcome not in HEALTH or gen != self.gen:
            return  # ignored, cancelled, or stale: not in the rolling window
        assert not self.open, "a non-trial call cannot complete in the open generation"
        self.bump(HEALTH[outcome], certain=True)
        requests = sum(self.stats[HEALTH[o]][0] for o in HEALTH)
        errors = requests - self.stats["successes"][0]
        if requests >= self.volume and 100 * errors >= self.percent * requests:
            self.open = True
            self.opened_at = now
            self.gen += 1


class BreakerMachine(RuleBasedStateMachine):
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.metrics = CollectorRegistry()
        self.reg = resilience.Registry(metrics_registry=self.metrics, clock=self.clock)
        self.model = Model(20, 50)

    @initialize(
        volume=st.integers(min_value=0, max_value=6),
        percent=st.sampled_from([1, 25, 50, 75, 100]),
    )
    def configure(self, volume: int, percent: int) -> None:
        self.model = Model(volume, percent)
        self.reg.configure_command(
            NAME, timeout=None, max_concurrent_requests=1, request_volume_threshold=volume,
            error_percent_threshold=percent, sleep_window=SLEEP, rolling_window=86_400,
            buckets=10, ignore_exceptions=(Caller,),
        )

    def _run(self, fn: Any, *args: Any) -> None:
        anyio.run(fn, *args, backend=self.backend)

    def _check_short(self, exc: BaseException) -> None:
        assert isinstance(exc, CircuitOpenError), repr(exc)
        assert exc.retry_after is not None
        if self.model.trial:
            assert 0 <= exc.retry_after <= SLEEP + 1e-9
        else:
            expected = self.model.opened_at + SLEEP - self.clock()
            assert abs(exc.retry_after - expected) < 1e-6, (exc.retry_after, expected)

    # -- rules -------------------------------------------------------------------------------

    @rule(dt=st.sampled_from(STEPS))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(dice=st.integers(min_value=0, max_value=7))
    def sometimes_flush(self, dice: int) -> None:
        if dice == 0:  # rarely: a flush undoes everything the other rules built up
            self.reg.flush()
            self.model.reset()

    @rule(kind=st.sampled_from(["success", "failure", "ignored", "timeout"]),
          with_fallback=st.booleans())
    def call(self, kind: str, with_fallback: bool) -> None:
        self._run(self._call, kind, with_fallback)

    @rule(kind=st.sampled_from(["success", "failure"]))
    def call_plain(self, kind: str) -> None:  # weights plain successes and failures up
        self._run(self._call, kind, False)

    async def _call(self, kind: str, with_fallback: bool) -> None:
        m, now = self.model, self.clock()
        verdict, gen, trial = m.admit(now)
        called = 0
        seen: list[BaseException] = []

        async def fn() -> str:
            nonlocal called
            called += 1
            if kind == "failure":
                raise Boom()
            if kind == "ignored":
                raise Caller()
            if kind == "timeout":
                await anyio.sleep_forever()
            return "ok"

        def fallback(exc: BaseException) -> str:
            seen.append(exc)
            return "fb"

        result: object = None
        error: BaseException | None = None
        if kind == "timeout":
            self.reg.configure_command(NAME, timeout=0.01)
        try:
            result = await self.reg.run(NAME, fn, fallback=fallback if with_fallback else None)
        except Exception as exc:
            error = exc
        finally:
            if kind == "timeout":
                self.reg.configure_command(NAME, timeout=None)
        if verdict == "short":
            assert called == 0, "an open circuit must not call the function"
            self._check_short(seen[0] if with_fallback else error)  # type: ignore[arg-type]
            m.short()
            if with_fallback:
                assert result == "fb"
                m.fallback(gen)
            return
        assert called == 1
        m.finish(now, gen, trial, kind)
        if kind == "success":
            assert result == "ok" and error is None
        elif kind == "ignored":
            assert isinstance(error, Caller) and not seen
        elif with_fallback:
            assert result == "fb" and error is None
            assert isinstance(seen[0], Boom if kind == "failure" else CommandTimeoutError)
            m.fallback(gen)
        else:
            assert isinstance(error, Boom if kind == "failure" else CommandTimeoutError)

    @rule(kind=st.sampled_from(["success", "failure", "ignored", "cancelled"]),
          others=st.integers(min_value=0, max_value=3))
    def held_call_with_concurrent_callers(self, kind: str, others: int) -> None:
        self._run(self._held, kind, others)

    async def _held(self, kind: str, others: int) -> None:
        m, now = self.model, self.clock()
        verdict, gen, trial = m.admit(now)
        called = 0

        async def must_not_run() -> None:
            nonlocal called
            called += 1

        if verdict == "short":
            try:
                await self.reg.run(NAME, must_not_run)
            except CircuitOpenError as exc:
                self._check_short(exc)
            else:
                raise AssertionError("an open circuit let a call through")
            m.short()
            assert called == 0
            return
        error = {"failure": Boom(), "ignored": Caller()}.get(kind)
        hold = Hold(value="held", error=error)
        async with anyio.create_task_group() as tg:
            pending = spawn(tg, lambda: self.reg.run(NAME, hold.fn))
            await hold.entered.wait()
            if trial:
                assert self.reg.get_circuit(NAME).state is CircuitState.HALF_OPEN
            for _ in range(others):
                v2, g2, t2 = m.admit(now)
                assert not t2
                try:
                    await self.reg.run(NAME, must_not_run)
                except CircuitOpenError as exc:
                    assert v2 == "short", "short-circuited while the model says closed"
                    self._check_short(exc)
                    m.short()
                except MaxConcurrencyError:
                    assert v2 == "run", "rejected by the bulkhead while the model says open"
                    m.finish(now, g2, False, "rejected")
                else:
                    raise AssertionError("a call got past a full bulkhead")
            if kind == "cancelled":
                pending.scope.cancel()
            else:
                hold.release.set()
        assert called == 0
        assert hold.calls == 1
        if kind == "cancelled":
            assert pending.cancelled and pending.error is None
        elif kind == "success":
            assert pending.value == "held"
        else:
            assert pending.error is error
        m.finish(now, gen, trial, kind)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        m = self.model
        circuit = self.reg.get_circuit(NAME)
        s = circuit.statistics()
        if m.pin_successes:
            assert s.successes in (0, 1), s
            m.stats["successes"] = [s.successes, s.successes]
            m.pin_successes = False
        for field in FIELDS:
            lo, hi = m.stats[field]
            assert lo <= getattr(s, field) <= hi, (field, getattr(s, field), lo, hi, s)
        requests = s.successes + s.failures + s.timeouts + s.rejections
        assert s.requests == requests, s
        errors = requests - s.successes
        expected_percent = 100 * errors / requests if requests else 0
        assert abs(s.error_percent - expected_percent) < 1e-9, s
        state = circuit.state
        if not m.open:
            assert state is CircuitState.CLOSED, (state, s)
        elif m.elapsed(self.clock()):
            assert state in (CircuitState.OPEN, CircuitState.HALF_OPEN), state
        else:
            assert state is CircuitState.OPEN, (state, s)
        assert circuit.in_flight == 0
        gauge = state_gauge(self.metrics, NAME)
        if any(gauge.values()):
            assert gauge[state.value] == 1 and sum(gauge.values()) == 1, gauge
        calls = all_calls(self.metrics, NAME)
        assert calls == {k: float(m.lifetime[k]) for k in calls}, (calls, m.lifetime)
        for outcome in ("success", "failure"):
            got = self.metrics.get_sample_value(
                "resilience_command_fallbacks_total", {"command": NAME, "outcome": outcome}
            )
            assert (got or 0) == m.fallbacks[outcome]


class TrioBreakerMachine(BreakerMachine):
    backend = "trio"


_SETTINGS = settings(
    max_examples=60, stateful_step_count=35, deadline=None, derandomize=True, database=None
)
BreakerMachine.TestCase.settings = _SETTINGS
TrioBreakerMachine.TestCase.settings = _SETTINGS
TestBreakerAsyncio = BreakerMachine.TestCase
TestBreakerTrio = TrioBreakerMachine.TestCase
