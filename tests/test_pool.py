"""WorkerPool behaviour, on asyncio and trio."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import anyio
import pytest
from prometheus_client import CollectorRegistry

from resilience import JobHandle, PoolClosedError, PoolFullError, WorkerPool


async def echo(x: int) -> int:
    return x


class Gate:
    """Jobs that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []
        self.running = 0
        self.peak = 0

    async def job(self, x: int) -> int:
        self.started.append(x)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(x)
            raise
        finally:
            self.running -= 1
        self.finished.append(x)
        return x


def pool(workers: int = 2, queue_size: int = 3, name: str = "p") -> WorkerPool:
    return WorkerPool(workers, queue_size, name, metrics_registry=CollectorRegistry())


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"workers": 0}, "workers"), ({"queue_size": -1}, "queue_size"), ({"name": ""}, "name")],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WorkerPool(**kwargs, metrics_registry=CollectorRegistry())  # type: ignore[arg-type]


def test_non_integer_workers_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="workers"):
        WorkerPool(2.5, metrics_registry=CollectorRegistry())  # type: ignore[arg-type]


async def test_submit_before_start_is_an_error() -> None:
    p = pool()
    with pytest.raises(RuntimeError, match="async with"):
        p.submit_nowait(echo, 1)


# -- basics ----------------------------------------------------------------------------------------


async def test_submit_run_and_handles() -> None:
    async with pool() as p:
        handle = await p.submit(echo, 7)
        assert isinstance(handle, JobHandle)
        assert await handle == 7
        assert handle.done() and not handle.cancelled()
        assert await handle == 7  # awaiting again gives the same value
        assert await p.run(echo, 9) == 9
        assert await p.submit_nowait(echo, 8) == 8


async def test_job_exception_is_reraised_unchanged_and_worker_survives() -> None:
    boom = ValueError("boom")

    async def fail() -> None:
        raise boom

    async with pool(workers=1) as p:
        with pytest.raises(ValueError) as info:
            await p.run(fail)
        assert info.value is boom
        assert await p.run(echo, 1) == 1  # the single worker is still alive
        assert p.statistics().failed == 1


async def test_sync_jobs_run_in_threads_at_most_workers_at_once() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    barrier = threading.Barrier(3, timeout=5)
    main_thread = threading.get_ident()

    def blocking(x: int) -> int:
        assert threading.get_ident() != main_thread
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        if x < 3:
            barrier.wait()  # the first three only pass together: proves three ran at once
        with lock:
            state["now"] -= 1
        return x * 2

    async with pool(workers=3, queue_size=20) as p:
        results = [r async for r in p.map(blocking, range(12))]
    assert results == [x * 2 for x in range(12)]
    assert state["peak"] == 3


async def test_statistics_snapshot_is_frozen() -> None:
    async with pool() as p:
        await p.run(echo, 1)
        snap = p.statistics()
        with pytest.raises(AttributeError):
            snap.queued = 5  # type: ignore[misc]
        assert (snap.submitted, snap.succeeded, snap.closed) == (1, 1, False)
    assert p.statistics().closed


# -- backpressure and the queue ----------------------------------------------------------------


async def test_submit_nowait_raises_pool_full_when_queue_is_full() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=2, name="tiny") as p:
        p.submit_nowait(gate.job, 0)
        await anyio.wait_all_tasks_blocked()  # the worker holds job 0
        p.submit_nowait(gate.job, 1)
        p.submit_nowait(gate.job, 2)
        with pytest.raises(PoolFullError, match="tiny") as info:
            p.submit_nowait(gate.job, 3)
        assert isinstance(info.value, anyio.WouldBlock)
        assert info.value.pool == "tiny"
        stats = p.statistics()
        assert (stats.running, stats.queued) == (1, 2)
        gate.release.set()
    assert gate.finished == [0, 1, 2]


async def test_submit_waits_for_room_backpressure() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=1) as p:
        await p.submit(gate.job, 0)
        await anyio.wait_all_tasks_blocked()
        await p.submit(gate.job, 1)  # fills the queue
        admitted = anyio.Event()

        async def third() -> None:
            await p.submit(gate.job, 2)
            admitted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            assert not admitted.is_set()
            assert p.statistics().waiting_submitters == 1
            gate.release.set()  # job 0 ends, job 1 starts, job 2 gets its room
            await admitted.wait()
    assert gate.finished == [0, 1, 2]


async def test_queue_size_zero_is_a_rendezvous() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=0) as p:
        await anyio.wait_all_tasks_blocked()  # the worker waits for a job
        p.submit_nowait(gate.job, 0)  # handed straight to it
        with pytest.raises(PoolFullError):  # no queue at all: the next one has no room
            p.submit_nowait(gate.job, 1)
        assert p.statistics().queued == 0
        taken = anyio.Event()

        async def submitter() -> None:
            await p.submit(gate.job, 1)
            taken.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(submitter)
            await anyio.wait_all_tasks_blocked()
            assert not taken.is_set()  # nobody took it yet: the submit waits
            gate.release.set()
            await taken.wait()  # the worker took it directly
    assert gate.finished == [0, 1]


# -- closing ------------------------------------------------------------------------------------


async def test_normal_exit_drains_queued_and_running_jobs() -> None:
    gate = Gate()
    async with pool(workers=2, queue_size=10) as p:
        handles = [p.submit_nowait(gate.job, i) for i in range(8)]
        await anyio.wait_all_tasks_blocked()
        assert sorted(gate.started) == [0, 1]
        gate.release.set()
    assert sorted(gate.finished) == list(range(8))
    assert [h.done() for h in handles] == [True] * 8
    with pytest.raises(PoolClosedError):
        await p.submit(echo, 1)
    with pytest.raises(PoolClosedError):
        p.submit_nowait(echo, 1)


async def test_exit_by_exception_cancels_and_reraises_as_is() -> None:
    gate = Gate()
    error = KeyError("mine")
    handles: list[JobHandle[int]] = []
    with pytest.raises(KeyError) as info:
        async with pool(workers=2, queue_size=10) as p:
            handles = [p.submit_nowait(gate.job, i) for i in range(6)]
            await anyio.wait_all_tasks_blocked()
            raise error
    assert info.value is error  # never an ExceptionGroup
    assert sorted(gate.cancelled) == [0, 1]
    assert sorted(gate.started) == [0, 1] and gate.finished == []
    for h in handles:
        assert h.cancelled()
        with pytest.raises(PoolClosedError):
            await h
    assert p.statistics().cancelled == 6


async def test_outer_cancellation_cancels_jobs_promptly() -> None:
    gate = Gate()
    with anyio.move_on_after(5) as outer:
        async with pool(workers=2, queue_size=10) as p:
            for i in range(5):
                p.submit_nowait(gate.job, i)
            await anyio.wait_all_tasks_blocked()
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert sorted(gate.cancelled) == [0, 1]
    stats = p.statistics()
    assert (stats.running, stats.queued, stats.cancelled) == (0, 0, 5)


async def test_blocked_submitters_are_woken_on_close() -> None:
    gate = Gate()
    errors: list[BaseException] = []
    async with pool(workers=1, queue_size=1) as p:
        p.submit_nowait(gate.job, 0)
        await anyio.wait_all_tasks_blocked()
        p.submit_nowait(gate.job, 1)

        async def blocked(i: int) -> None:
            try:
                await p.submit(gate.job, i)
            except PoolClosedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(2, 5):
                tg.start_soon(blocked, i)
            await anyio.wait_all_tasks_blocked()
            assert p.statistics().waiting_submitters == 3

            async def closer() -> None:
                await p.aclose()

            tg.start_soon(closer)
            await anyio.wait_all_tasks_blocked()
            assert len(errors) == 3  # woken while jobs 0 and 1 still drain
            gate.release.set()
        await p.aclose()  # again: harmless
    assert gate.finished == [0, 1]
    assert all(e.pool == "p" for e in errors if isinstance(e, PoolClosedError))


async def test_handle_cancel_queued_and_running() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=5) as p:
        running = p.submit_nowait(gate.job, 0)
        queued = p.submit_nowait(gate.job, 1)
        await anyio.wait_all_tasks_blocked()
        assert queued.cancel() and queued.cancelled()
        assert p.statistics().queued == 0
        assert running.cancel()
        with pytest.raises(PoolClosedError, match="cancelled"):
            await running
        assert gate.cancelled == [0]
        assert not running.cancel()  # already finished
        assert await p.run(echo, 3) == 3  # the worker carries on
        gate.release.set()
    assert gate.started == [0]


async def test_unretrieved_failures_are_logged_on_close(caplog: pytest.LogCaptureFixture) -> None:
    async def fail(tag: str) -> None:
        raise RuntimeError(tag)

    with caplog.at_level(logging.ERROR, logger="resilience.pool"):
        async with pool(name="logged") as p:
            p.submit_nowait(fail, "nobody-looked")
            retrieved = p.submit_nowait(fail, "looked-at")
            with pytest.raises(RuntimeError):
                await retrieved
    records = [r for r in caplog.records if r.name == "resilience.pool"]
    assert len(records) == 1
    assert "logged" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == "nobody-looked"


async def test_keyboard_interrupt_in_a_job_propagates_unwrapped() -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        async with pool() as p:
            p.submit_nowait(interrupt)
            await anyio.sleep_forever()


# -- map ------------------------------------------------------------------------------------------


async def test_map_keeps_input_order_whatever_the_finish_order() -> None:
    async def slow_first(x: int) -> int:
        if x == 0:
            await anyio.wait_all_tasks_blocked()  # finishes after the others
        return x * 10

    async with pool(workers=4, queue_size=4) as p:
        assert [r async for r in p.map(slow_first, range(20))] == [x * 10 for x in range(20)]


async def test_map_unordered_yields_in_completion_order() -> None:
    release = anyio.Event()
    completed: list[int] = []

    async def job(x: int) -> int:
        if x == 0:
            await release.wait()
        completed.append(x)
        return x

    async with pool(workers=3, queue_size=3) as p:
        got: list[int] = []
        async for r in p.map(job, range(6), ordered=False):
            got.append(r)
            if len(got) == 5:
                release.set()
    assert got == completed  # exactly the order in which the jobs finished
    assert got[5] == 0  # the slow first item came last, not first


async def test_map_over_an_endless_generator_is_lazy() -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    async with pool(workers=2, queue_size=3) as p:
        async with aclosing(p.map(echo, endless())) as results:
            got = []
            async for r in results:
                got.append(r)
                if len(got) == 50:
                    break
        assert got == list(range(50))
        assert pulled <= 50 + 2 * (2 + 3) + 1  # never more than the window ahead


async def test_map_accepts_async_iterables() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(10):
            await anyio.lowlevel.checkpoint()
            yield i

    async with pool() as p:
        assert [r async for r in p.map(echo, agen())] == list(range(10))


async def test_map_first_failure_raises_and_cancels_the_rest() -> None:
    gate = Gate()
    boom = ValueError("item 2")

    async def job(x: int) -> int:
        if x == 2:
            raise boom
        if x >= 3:
            return await gate.job(x)
        return x

    async with pool(workers=3, queue_size=4) as p:
        got: list[int] = []
        with pytest.raises(ValueError) as info:
            async for r in p.map(job, range(100)):
                got.append(r)
        assert info.value is boom
        assert got == [0, 1]
        await anyio.wait_all_tasks_blocked()
        stats = p.statistics()
        assert (stats.running, stats.queued) == (0, 0)
        assert gate.finished == [] and sorted(gate.cancelled) == gate.started
        assert await p.run(echo, 1) == 1


async def test_map_closed_early_cancels_its_jobs() -> None:
    gate = Gate()
    async with pool(workers=2, queue_size=2) as p:
        results = p.map(gate.job, range(100))
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                await results.__anext__()

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert p.statistics().running == 2
        await results.aclose()
        await anyio.wait_all_tasks_blocked()
        assert (p.statistics().running, p.statistics().queued) == (0, 0)
        assert sorted(gate.cancelled) == [0, 1]


async def test_abandoned_map_is_cancelled_when_the_pool_closes() -> None:
    gate = Gate()
    async with pool(workers=2, queue_size=2) as p:
        results = p.map(gate.job, itertools.count())
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                await results.__anext__()

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        # leaving without closing the iterator: the pool cancels its jobs on close
    assert sorted(gate.cancelled) == [0, 1] and gate.finished == []
    with pytest.raises(PoolClosedError):
        await results.__anext__()


async def test_map_input_error_is_raised_after_earlier_results() -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise LookupError("input broke")

    async with pool() as p:
        got = []
        with pytest.raises(LookupError, match="input broke"):
            async for r in p.map(echo, broken()):
                got.append(r)
        assert got == [1, 2]


# -- composition with commands --------------------------------------------------------------------


async def test_a_command_function_is_a_pool_job() -> None:
    from resilience import Registry

    registry = Registry(metrics_registry=CollectorRegistry())

    @registry.command("pool-composed", timeout=1.0, fallback=lambda exc: -1)
    async def guarded(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return x + 100

    async with pool(workers=2, queue_size=2) as p:
        assert await p.run(guarded, 1) == 101
        assert await p.run(guarded, -5) == -1  # the command's fallback
        assert [r async for r in p.map(guarded, range(5))] == [100, 101, 102, 103, 104]
    assert registry.get_circuit("pool-composed").statistics().requests == 7


async def test_the_default_command_decorator_composes_too() -> None:
    from resilience import command

    @command("pool-default-composed")
    def legacy(x: int) -> int:  # a sync command: the pool runs it in a thread
        return x * 3

    async with pool() as p:
        assert await p.run(legacy, 4) == 12


# -- edges ----------------------------------------------------------------------------------------


async def test_a_fresh_pool_takes_workers_plus_queue_size_at_once() -> None:
    gate = Gate()
    async with pool(workers=3, queue_size=2) as p:
        handles = [p.submit_nowait(gate.job, i) for i in range(5)]  # no await in between
        with pytest.raises(PoolFullError):
            p.submit_nowait(gate.job, 5)
        assert handles[0].cancel()  # handed to a worker that has not even started: taken back
        await anyio.wait_all_tasks_blocked()
        assert sorted(gate.started) == [1, 2, 3]
        assert p.statistics().queued == 1
        gate.release.set()
    assert sorted(gate.finished) == [1, 2, 3, 4]
    assert handles[0].cancelled()


async def test_cancelling_run_cancels_its_job() -> None:
    gate = Gate()
    async with pool(workers=1) as p:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(p.run, gate.job, 0)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert gate.cancelled == [0]
        assert p.statistics().running == 0
        assert await p.run(echo, 2) == 2


async def test_aclose_from_another_task_drains_and_refuses_new_jobs() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=5) as p:
        handles = [p.submit_nowait(gate.job, i) for i in range(3)]
        closed = anyio.Event()

        async def closer() -> None:
            await p.aclose()
            closed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            await anyio.wait_all_tasks_blocked()
            assert not closed.is_set()  # still draining
            with pytest.raises(PoolClosedError, match="closed"):
                p.submit_nowait(echo, 1)
            gate.release.set()
        assert closed.is_set()
        assert [await h for h in handles] == [0, 1, 2]


async def test_jobs_may_submit_more_jobs() -> None:
    async with pool(workers=2, queue_size=2) as p:

        async def parent(x: int) -> int:
            return await p.run(echo, x) + 1

        assert await p.run(parent, 1) == 2


async def test_closing_a_map_whose_jobs_wait_for_room_keeps_exact_accounts() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=1) as p:
        p.submit_nowait(gate.job, 0)
        p.submit_nowait(gate.job, 1)  # the pool is full: the map's jobs wait in its backlog
        results = p.map(gate.job, range(10, 20))
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                await results.__anext__()

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            s = p.statistics()
            assert (s.submitted, s.queued, s.waiting_submitters) == (2, 1, 0)
            assert len(p._sched.backlog) == 4  # read ahead up to the window: 2 * (1 + 1)
            tg.cancel_scope.cancel()
        await results.aclose()
        await anyio.wait_all_tasks_blocked()
        s = p.statistics()
        assert s.waiting_submitters == 0
        assert not p._sched.backlog
        assert s.submitted == 2 == s.queued + s.running
        assert s.cancelled == 0  # the map's job was never submitted
        gate.release.set()
    assert gate.finished == [0, 1]


async def test_blocked_submitters_go_before_a_maps_backlog() -> None:
    gate = Gate()
    got: list[int] = []
    async with pool(workers=1, queue_size=1) as p:
        p.submit_nowait(gate.job, 0)
        p.submit_nowait(gate.job, 1)
        async with aclosing(p.map(gate.job, range(10, 13))) as results:

            async def consume() -> None:
                got.extend([r async for r in results])

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                assert len(p._sched.backlog) == 3  # read ahead, not submitted
                assert p.statistics().submitted == 2
                tg.start_soon(p.submit, gate.job, 2)
                await anyio.wait_all_tasks_blocked()
                assert p.statistics().waiting_submitters == 1
                gate.release.set()
    assert got == [10, 11, 12]
    assert gate.started == [0, 1, 2, 10, 11, 12]
    s = p.statistics()
    assert (s.submitted, s.succeeded, s.cancelled) == (6, 6, 0)


async def test_submitter_cancelled_just_as_room_appears_loses_nothing() -> None:
    for queue_size in (0, 1) * 10:  # scheduling order varies (trio randomises it): repeat
        gate = Gate()
        async with pool(workers=1, queue_size=queue_size) as p:
            for i in range(1 + queue_size):
                p.submit_nowait(gate.job, i)
            handles: list[JobHandle[int]] = []
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def submitter(
                    scope: anyio.CancelScope = scope,
                    gate: Gate = gate,
                    handles: list[JobHandle[int]] = handles,
                ) -> None:
                    with scope:
                        handles.append(await p.submit(gate.job, 99))

                tg.start_soon(submitter)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()  # cancelled, and in the same step room appears
                gate.release.set()
            await anyio.wait_all_tasks_blocked()
            s = p.statistics()
            assert (s.running, s.queued, s.waiting_submitters) == (0, 0, 0)
            assert s.submitted == s.succeeded + s.cancelled
            assert await p.run(echo, 5) == 5


async def test_map_and_plain_submitters_share_a_full_pool() -> None:
    gate = Gate()
    async with pool(workers=2, queue_size=4) as p:
        got: list[int] = []
        handles: list[JobHandle[int]] = []

        async def consume() -> None:
            got.extend([r async for r in p.map(gate.job, range(30))])

        async def submit_more() -> None:
            for i in range(100, 110):
                handles.append(await p.submit(gate.job, i))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            tg.start_soon(submit_more)
            await anyio.wait_all_tasks_blocked()
            s = p.statistics()
            assert (s.running, s.queued) == (2, 4)  # full, feeder and submitter waiting
            gate.release.set()
        assert got == list(range(30))
        assert [await h for h in handles] == list(range(100, 110))


async def test_closing_while_a_map_waits_for_queue_room() -> None:
    gate = Gate()
    async with pool(workers=1, queue_size=4) as p:
        results = p.map(gate.job, itertools.count())
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                await results.__anext__()

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            assert (p.statistics().running, p.statistics().queued) == (1, 4)
            tg.cancel_scope.cancel()
        # the block ends normally with the map's feeder still waiting: close must not hang
    s = p.statistics()
    assert (s.running, s.queued, s.cancelled, s.succeeded) == (0, 0, 5, 0)


async def test_several_tasks_may_await_one_handle() -> None:
    gate = Gate()
    async with pool(workers=1) as p:
        handle = p.submit_nowait(gate.job, 4)
        seen: list[int] = []

        async def watch() -> None:
            seen.append(await handle)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(watch)
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as scope:  # one watcher gives up: the others still wake
                scope.cancel()
                await handle
            gate.release.set()
        assert seen == [4, 4, 4]


async def test_map_as_a_context_manager_closes_itself() -> None:
    gate = Gate()
    async with pool(workers=2, queue_size=2) as p:
        async with p.map(gate.job, range(10)) as results:
            async with anyio.create_task_group() as tg:
                tg.start_soon(results.__anext__)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert (p.statistics().running, p.statistics().queued) == (0, 0)
        assert sorted(gate.cancelled) == [0, 1]
        assert [r async for r in results] == []  # a closed map yields nothing more


async def test_a_finished_map_keeps_no_handles_for_reuse() -> None:
    async with pool(workers=2, queue_size=2) as p:
        results = p.map(echo, range(50))
        assert [r async for r in results] == list(range(50))
        assert not results._feed._spare and not results._feed._results
