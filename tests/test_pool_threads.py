"""Plain-def jobs: long-lived worker threads that take the next plain-def jobs themselves."""

from __future__ import annotations

import threading
from collections.abc import Awaitable
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from resilience import PoolClosedError, WorkerPool


def pool(workers: int = 2, queue_size: int = 4, name: str = "t") -> WorkerPool:
    return WorkerPool(workers, queue_size, name, metrics_registry=CollectorRegistry())


class Blocker:
    """Plain-def jobs that block their thread until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.ran: list[int] = []

    def job(self, x: int) -> int:
        self.started.release()
        assert self.release.wait(10)
        self.ran.append(x)
        return x

    async def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            assert await anyio.to_thread.run_sync(self.started.acquire, True, 10)


async def test_a_thread_takes_the_next_plain_def_jobs_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hops = 0
    run_sync = anyio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return await run_sync(*args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    blocker = Blocker()
    threads: set[int] = set()

    def job(x: int) -> int:
        threads.add(threading.get_ident())
        return x + 1

    async with pool(workers=1, queue_size=10) as p:
        first = p.submit_nowait(blocker.job, 0)
        await blocker.wait_started()
        assert hops == 2  # the first job's thread, and the test's own wait for it
        handles = [p.submit_nowait(job, i) for i in range(10)]  # all in the lane
        blocker.release.set()
        assert [await h for h in handles] == list(range(1, 11))
        assert await first == 0
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert hops == 2  # no more: the first job's thread ran the other ten too


async def test_plain_def_jobs_run_in_anyio_worker_threads() -> None:
    def job() -> str:
        return anyio.from_thread.run_sync(lambda: "from the loop")

    async with pool() as p:
        assert await p.run(job) == "from the loop"


async def test_a_plain_def_returning_an_awaitable_is_awaited() -> None:
    async def later(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 2

    def job(x: int) -> Awaitable[int]:
        return later(x)

    async with pool() as p:
        assert await p.run(job, 4) == 8
        assert [r async for r in p.map(job, range(5))] == [0, 2, 4, 6, 8]


async def test_a_plain_def_failure_reaches_the_handle_as_the_same_object() -> None:
    boom = LookupError("thread")

    def job() -> None:
        raise boom

    async with pool(workers=1) as p:
        with pytest.raises(LookupError) as info:
            await p.run(job)
        assert info.value is boom
        assert p.statistics().failed == 1


async def test_blocked_submitters_get_the_room_a_thread_frees() -> None:
    blocker = Blocker()
    async with pool(workers=1, queue_size=1) as p:
        first = p.submit_nowait(blocker.job, 0)
        await blocker.wait_started()
        second = p.submit_nowait(blocker.job, 1)  # in the lane
        got: list[int] = []

        async def third() -> None:
            got.append(await (await p.submit(blocker.job, 2)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            s = p.statistics()
            assert (s.running, s.queued, s.waiting_submitters) == (1, 1, 1)
            blocker.release.set()
        assert [await first, await second, got] == [0, 1, [2]]
        s = p.statistics()
        assert (s.running, s.queued, s.submitted, s.succeeded) == (0, 0, 3, 3)
    assert blocker.ran == [0, 1, 2]


async def test_cancelling_a_running_plain_def_job_drops_its_outcome() -> None:
    blocker = Blocker()
    async with pool(workers=1, queue_size=2) as p:
        running = p.submit_nowait(blocker.job, 0)
        queued = p.submit_nowait(blocker.job, 1)
        await blocker.wait_started()
        assert running.cancel()  # the thread cannot be interrupted: it finishes, unseen
        assert queued.cancel()
        assert p.statistics().queued == 0
        blocker.release.set()
        with pytest.raises(PoolClosedError):
            await running
        assert running.cancelled()
        assert await p.run(blocker.job, 2) == 2  # the worker and its thread carry on
        s = p.statistics()
        assert (s.running, s.queued, s.cancelled, s.succeeded) == (0, 0, 2, 1)
    assert blocker.ran == [0, 2]


async def test_an_error_exit_waits_for_running_threads_and_drops_the_lane() -> None:
    blocker = Blocker()
    handles = []
    async with anyio.create_task_group() as outer:
        with pytest.raises(KeyError):
            async with pool(workers=2, queue_size=4) as p:
                handles = [p.submit_nowait(blocker.job, i) for i in range(5)]
                await blocker.wait_started(2)

                async def release_once_aborting() -> None:
                    await anyio.wait_all_tasks_blocked()  # the pool waits for its threads
                    assert p.statistics().closed
                    blocker.release.set()

                outer.start_soon(release_once_aborting)
                raise KeyError("abort")
    assert sorted(blocker.ran) == [0, 1]  # the three in the lane never ran
    for h in handles:
        assert h.cancelled()
    assert p.statistics().cancelled == 5


async def test_mixed_async_and_plain_def_jobs_keep_exact_accounts() -> None:
    def sync_job(x: int) -> int:
        return -x

    async def async_job(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    async with pool(workers=3, queue_size=5) as p:
        handles = []
        for i in range(60):
            handles.append(await p.submit(sync_job if i % 3 else async_job, i))
        assert [await h for h in handles] == [-i if i % 3 else i for i in range(60)]
        s = p.statistics()
        assert (s.submitted, s.succeeded, s.failed, s.cancelled) == (60, 60, 0, 0)
        assert (s.running, s.queued) == (0, 0)


@pytest.mark.parametrize("kind", ["pool", "executor"])
async def test_the_plain_def_benchmark_cases_run(kind: str) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench/
    from bench import pool_bench

    make = pool_bench.pool_map_sync if kind == "pool" else pool_bench.executor_map
    for job in (pool_bench.spin, pool_bench.doze):
        await make(job, pool_bench.THREADS)(20)
