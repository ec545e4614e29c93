"""WorkerPool regressions: exceptions that escape, self-closing jobs, abandoned maps, validation."""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Callable

import anyio
import pytest
from prometheus_client import CollectorRegistry

from resilience import WorkerPool


def pool(workers: int = 2, queue_size: int = 2, name: str = "r") -> WorkerPool:
    return WorkerPool(workers, queue_size, name, metrics_registry=CollectorRegistry())


class Stop(BaseException):
    """A BaseException of the user's own."""


def _errors() -> list[BaseException]:
    return [KeyboardInterrupt("ki"), GeneratorExit("ge"), Stop("mine")]


def _job(exc: BaseException, is_async: bool) -> Callable[[], object]:
    async def async_job() -> None:
        raise exc

    def sync_job() -> None:
        raise exc

    return async_job if is_async else sync_job


# -- a BaseException from a job ------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
@pytest.mark.parametrize("make", range(3), ids=["KeyboardInterrupt", "GeneratorExit", "custom"])
async def test_base_exception_propagates_once_and_is_not_logged(
    caplog: pytest.LogCaptureFixture, make: int, is_async: bool
) -> None:
    error = _errors()[make]
    with caplog.at_level(logging.ERROR, logger="resilience.pool"):
        with pytest.raises(type(error)) as info:
            async with pool() as p:
                p.submit_nowait(_job(error, is_async))
                await anyio.sleep_forever()
    assert info.value is error
    assert [r for r in caplog.records if r.name == "resilience.pool"] == []


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
@pytest.mark.parametrize("make", range(3), ids=["KeyboardInterrupt", "GeneratorExit", "custom"])
async def test_the_awaiter_gets_the_jobs_base_exception_itself(
    caplog: pytest.LogCaptureFixture, make: int, is_async: bool
) -> None:
    error = _errors()[make]
    seen: list[BaseException] = []
    with caplog.at_level(logging.ERROR, logger="resilience.pool"):
        with pytest.raises(type(error)) as info:
            async with pool() as p:
                handle = p.submit_nowait(_job(error, is_async))
                try:
                    await handle
                except BaseException as exc:
                    seen.append(exc)
                    raise
    assert len(seen) == 1 and seen[0] is error  # not a cancellation, not a copy
    assert info.value is error
    assert [r for r in caplog.records if r.name == "resilience.pool"] == []


async def test_an_ordinary_failure_nobody_retrieved_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise LookupError("lost")

    with caplog.at_level(logging.ERROR, logger="resilience.pool"):
        with pytest.raises(KeyError):
            async with pool() as p:
                p.submit_nowait(fail)
                await anyio.wait_all_tasks_blocked()
                raise KeyError("the block's own")
    records = [r for r in caplog.records if r.name == "resilience.pool"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == "lost"


# -- a job closing its own pool ------------------------------------------------------------------


async def test_a_job_closing_its_own_pool_gets_a_runtime_error() -> None:
    async with pool() as p:

        async def closer() -> None:
            await p.aclose()

        async def child_closer() -> None:  # from a task the job started
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(p.aclose)
            except* RuntimeError as group:
                raise group.exceptions[0] from None

        def thread_closer() -> None:  # a plain-def job, through the event loop
            anyio.from_thread.run(p.aclose)

        with anyio.fail_after(10):  # a hang guard only: the old behaviour was a deadlock
            for job in (closer, child_closer, thread_closer):
                with pytest.raises(RuntimeError, match="own pool"):
                    await p.run(job)
        assert not p.statistics().closed  # the refused call changed nothing
        await p.run(anyio.sleep, 0)


async def test_a_job_awaiting_its_draining_pool_gets_a_runtime_error() -> None:
    release = anyio.Event()
    errors: list[BaseException] = []

    async def waits_for_drain() -> None:
        await release.wait()  # the pool is closing by now
        try:
            await p.aclose()
        except RuntimeError as exc:
            errors.append(exc)

    with anyio.fail_after(10):  # a hang guard only
        async with pool() as p:
            p.submit_nowait(waits_for_drain)
            await anyio.wait_all_tasks_blocked()
            async with anyio.create_task_group() as tg:
                tg.start_soon(p.aclose)
                await anyio.wait_all_tasks_blocked()
                assert p.statistics().closed
                release.set()
    assert len(errors) == 1


async def test_a_job_of_another_pool_may_close_this_one() -> None:
    async with pool(name="outer") as outer:
        inner = pool(name="inner")
        await inner.__aenter__()

        async def close_inner() -> None:
            await inner.aclose()

        await outer.run(close_inner)
        assert inner.statistics().closed
        await inner.__aexit__(None, None, None)


# -- abandoned maps ------------------------------------------------------------------------------


async def test_maps_abandoned_by_cancelled_consumers_stop_once_collected() -> None:
    release = anyio.Event()
    finished = 0

    async def job(x: int) -> int:
        nonlocal finished
        await release.wait()
        finished += 1
        return x

    def feeders() -> list[str]:
        return [t.name for t in anyio.get_running_tasks() if t.name and "map feeder" in t.name]

    async with pool(workers=2, queue_size=2) as p:
        for _ in range(30):  # consumers cancelled inside `async for`, no aclosing()
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async for _ in p.map(job, itertools.count()):
                        pass

                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
        gc.collect()
        for _ in range(3):
            await anyio.wait_all_tasks_blocked()
            await anyio.lowlevel.checkpoint()
        assert feeders() == []
        s = p.statistics()
        assert (s.running, s.queued, s.waiting_submitters) == (0, 0, 0)
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert finished == 0  # nothing ran for nobody
        assert p.statistics().succeeded == 0
        assert [r async for r in p.map(job, range(5))] == list(range(5))  # all capacity left


async def test_an_abandoned_map_that_nobody_started_costs_nothing() -> None:
    async with pool() as p:
        p.map(anyio.sleep, [0, 0])
        gc.collect()
        await anyio.wait_all_tasks_blocked()
        assert p.statistics().submitted == 0


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"workers": "3"}, TypeError, "workers"),
        ({"workers": True}, TypeError, "workers"),
        ({"workers": 2.0}, TypeError, "workers"),
        ({"queue_size": 1.5}, TypeError, "queue_size"),
        ({"queue_size": None}, TypeError, "queue_size"),
        ({"name": None}, TypeError, "name"),
        ({"name": b"pool"}, TypeError, "name"),
        ({"workers": 0}, ValueError, "workers"),
        ({"workers": -2}, ValueError, "workers"),
        ({"queue_size": -1}, ValueError, "queue_size"),
        ({"name": ""}, ValueError, "name"),
        ({"name": "bad\ud800"}, ValueError, "name"),
    ],
)
def test_validation_names_the_field(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        WorkerPool(**kwargs, metrics_registry=CollectorRegistry())  # type: ignore[arg-type]


def test_a_str_subclass_name_is_kept_as_a_plain_str() -> None:
    class Name(str):
        pass

    p = WorkerPool(name=Name("sub"), metrics_registry=CollectorRegistry())
    assert type(p.name) is str and p.name == "sub"
