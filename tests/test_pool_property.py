"""Property test: whatever submitters, jobs and cancellations do, no pool capacity is lost.

Random sequences of blocking submits, ``submit_nowait``, ``map`` consumers (whose read-ahead
waits in the backlog), cancelled submitters and map consumers (also in the race windows
around admission), job cancellations and job completions. After
every step (once every task is blocked) the accounting must be exact: at most ``workers``
running, at most ``queue_size`` queued, no idle worker while jobs are queued, no unused room
while submitters wait. At the end the pool must still take exactly ``workers + queue_size``.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from resilience import JobHandle, PoolClosedError, PoolFullError, WorkerPool

OPS = st.one_of(
    st.tuples(st.just("submit")),
    st.tuples(st.just("nowait")),
    st.tuples(st.just("cancel_submitter"), st.integers(0, 30)),
    st.tuples(st.just("cancel_job"), st.integers(0, 30)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("finish_then_cancel"), st.integers(0, 30), st.integers(0, 30),
              st.integers(0, 3)),
    st.tuples(st.just("cancel_then_finish"), st.integers(0, 30), st.integers(0, 30)),
    st.tuples(st.just("map"), st.integers(1, 6)),
)


class Model:
    def __init__(self) -> None:
        self.gates: list[anyio.Event] = []
        self.handles: list[JobHandle[Any]] = []
        self.scopes: list[anyio.CancelScope] = []
        self.running = 0
        self.succeeded = 0  # counted here, to check the pool's (derived) count

    async def job(self, gate: anyio.Event) -> None:
        self.running += 1
        try:
            await gate.wait()
        finally:
            self.running -= 1
        self.succeeded += 1

    def new_gate(self) -> anyio.Event:
        gate = anyio.Event()
        self.gates.append(gate)
        return gate


def check(p: WorkerPool, model: Model) -> None:
    s = p.statistics()
    assert 0 <= s.running <= p.workers
    assert 0 <= s.queued <= p.queue_size
    assert s.running == model.running  # the busy count is what really runs
    assert s.succeeded == model.succeeded
    assert s.failed == 0 and s.cancelled >= 0
    if s.queued:
        assert s.running == p.workers  # nobody idles while work waits
    if s.waiting_submitters or p._sched.backlog:  # nothing waits while there is room
        assert s.queued == p.queue_size and s.running == p.workers


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    workers=st.integers(1, 3),
    queue_size=st.integers(0, 3),
    ops=st.lists(OPS, max_size=25),
)
async def test_no_capacity_is_ever_lost(workers: int, queue_size: int, ops: list[Any]) -> None:
    model = Model()
    async with WorkerPool(workers, queue_size, "prop", metrics_registry=CollectorRegistry()) as p:
        async with anyio.create_task_group() as tg:

            async def submitter(gate: anyio.Event, scope: anyio.CancelScope) -> None:
                with scope:
                    model.handles.append(await p.submit(model.job, gate))

            async def mapper(gates: list[anyio.Event], scope: anyio.CancelScope) -> None:
                with scope:
                    async with aclosing(p.map(model.job, gates)) as results:
                        async for _ in results:
                            pass

            await anyio.wait_all_tasks_blocked()
            for op in ops:
                kind = op[0]
                if kind == "submit":
                    scope = anyio.CancelScope()
                    model.scopes.append(scope)
                    tg.start_soon(submitter, model.new_gate(), scope)
                elif kind == "nowait":
                    try:
                        model.handles.append(p.submit_nowait(model.job, model.new_gate()))
                    except PoolFullError:
                        pass
                elif kind == "map":
                    scope = anyio.CancelScope()
                    model.scopes.append(scope)
                    tg.start_soon(mapper, [model.new_gate() for _ in range(op[1])], scope)
                elif kind == "cancel_submitter" and model.scopes:
                    model.scopes[op[1] % len(model.scopes)].cancel()
                elif kind == "cancel_job" and model.handles:
                    model.handles[op[1] % len(model.handles)].cancel()
                elif kind == "finish" and model.gates:
                    model.gates[op[1] % len(model.gates)].set()
                elif kind == "finish_then_cancel" and model.gates and model.scopes:
                    model.gates[op[1] % len(model.gates)].set()
                    for _ in range(op[3]):  # let some of the wake-ups happen first
                        await anyio.lowlevel.checkpoint()
                    model.scopes[op[2] % len(model.scopes)].cancel()
                elif kind == "cancel_then_finish" and model.gates and model.scopes:
                    # the cancelled submitter may be admitted before it gets to run
                    model.scopes[op[2] % len(model.scopes)].cancel()
                    model.gates[op[1] % len(model.gates)].set()
                await anyio.wait_all_tasks_blocked()
                check(p, model)
            for gate in model.gates:
                gate.set()
            await anyio.wait_all_tasks_blocked()
            check(p, model)

        # all capacity is still there: exactly workers running + queue_size queued
        final = anyio.Event()
        for _ in range(workers + queue_size):
            await p.submit(model.job, final)
            await anyio.wait_all_tasks_blocked()
        assert (p.statistics().running, p.statistics().queued) == (workers, queue_size)
        try:
            p.submit_nowait(model.job, final)
        except PoolFullError:
            pass
        else:
            raise AssertionError("the pool took more than workers + queue_size jobs")
        final.set()
    stats = p.statistics()
    assert (stats.running, stats.queued, stats.waiting_submitters) == (0, 0, 0)
    assert stats.succeeded == model.succeeded
    assert stats.submitted == stats.succeeded + stats.cancelled
    for h in model.handles:
        assert h.done()
    try:
        p.submit_nowait(model.job, final)
    except PoolClosedError:
        pass
    else:
        raise AssertionError("a closed pool took a job")
