"""``WorkerPool.map``: a lazy, bounded, cancellable async iterator of job results.

A feeder task (running in the pool's task group) reads the input and submits jobs while this
map has fewer than ``2 * (workers + queue_size)`` jobs submitted and not yet consumed, so
memory is bounded by the pool, not by the input. (Twice the pool's capacity, so that results
waiting for the consumer do not keep the queue from being refilled.) The consumer and the
feeder wake each other only when one of them actually waits, and a feeder facing a full queue
waits for it to drain to half: a steady stream costs a few task switches per queue-full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from inspect import iscoroutinefunction
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from ._errors import PoolClosedError
from ._pool_job import QUEUED, SUCCEEDED, JobHandle

if TYPE_CHECKING:
    from ._pool import WorkerPool
    from ._pool_wait import Waiter

__all__ = ["MapIterator"]

A = TypeVar("A")
T = TypeVar("T")


class _Stopped(Exception):
    """The consumer side finished while the feeder was about to submit."""


class MapIterator(Generic[A, T]):
    """Async iterator returned by :meth:`WorkerPool.map`; close it with ``aclose()``.

    Also an async context manager (``async with pool.map(...) as results``) that closes it.
    """

    def __init__(
        self,
        pool: WorkerPool,
        fn: Callable[[A], Any],
        iterable: Iterable[A] | AsyncIterable[A],
        ordered: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"pool {pool.name!r}: map() needs a callable, got {fn!r}")
        if not isinstance(iterable, Iterable | AsyncIterable):
            raise TypeError(
                f"pool {pool.name!r}: map() needs an iterable or async iterable, "
                f"got {type(iterable).__name__}"
            )
        self._pool = pool
        self._fn = fn
        self._is_async = iscoroutinefunction(fn)
        self._iterable: Iterable[A] | AsyncIterable[A] | None = iterable
        self._ordered = ordered
        self._window = 2 * (pool.workers + pool.queue_size)
        # wake a feeder waiting for window room once it can read a batch (half a queue): one
        # task switch per batch; what it reads goes to the pool's backlog if the queue is full
        self._refill_at = self._window - max(1, pool.queue_size // 2)
        # ordered: submitted jobs in input order; unordered: finished jobs in finish order
        self._results: deque[JobHandle[Any]] = deque()
        self._live: set[JobHandle[Any]] = set()  # unordered: submitted, not finished
        self._outstanding = 0  # submitted and not yet consumed
        self._running = False  # started and not finished: the only test on the hot path
        self._finished = False  # consumer side done (exhausted, failed or closed)
        self._feeding = False
        self._exhausted = False  # input ended normally
        self._error: BaseException | None = None  # from the input, or the pool closing
        self._feed_scope: anyio.CancelScope | None = None
        self._consumer: Waiter | None = None
        self._feeder: Waiter | None = None
        # handles of consumed successful jobs, reused for new ones: a map's handles never
        # reach the user, and a steady stream that allocates nothing long-lived per job
        # keeps the cyclic GC from running every few hundred jobs
        self._spare: list[JobHandle[Any]] = []

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __aenter__(self) -> MapIterator[A, T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading input and cancel this map's jobs that were not consumed."""
        self._stop()

    async def __anext__(self) -> T:
        if not self._running:
            if self._finished:
                raise StopAsyncIteration
            self._start()
        results = self._results
        while True:
            if results:
                job = results[0]
                if job._state >= SUCCEEDED:
                    results.popleft()
                    self._outstanding -= 1
                    feeder = self._feeder
                    if feeder is not None and self._outstanding <= self._refill_at:
                        self._feeder = None
                        feeder.set()
                    if job._state == SUCCEEDED:
                        value: T = job._result
                        job._result = None
                        self._spare.append(job)
                        return value
                    self._stop()
                    failed: T = job._outcome()  # raises the job's exception
                    return failed
            elif not self._feeding and not self._outstanding:
                self._stop()
                if self._error is not None:
                    raise self._error
                if not self._exhausted:
                    raise PoolClosedError(
                        f"pool {self._pool.name!r} closed before map() finished",
                        pool=self._pool.name,
                    )
                raise StopAsyncIteration
            if self._consumer is not None:
                raise RuntimeError(
                    f"pool {self._pool.name!r}: another task is already waiting on this map()"
                )
            event = self._consumer = self._pool._new_waiter()
            try:
                await event.wait()
            finally:
                self._consumer = None

    # -- internals -----------------------------------------------------------------------------

    def _start(self) -> None:
        pool = self._pool
        try:
            tg = pool._check_open()
        except BaseException:
            self._finished = True
            raise
        self._running = self._feeding = True
        pool._maps.add(self)
        tg.start_soon(self._feed, name=f"resilience pool {pool.name!r} map feeder")

    def _stop(self) -> None:
        """Consumer side is done: stop the feeder, cancel every job not consumed."""
        if self._finished:
            return
        self._finished = True
        self._running = False
        self._pool._maps.discard(self)
        if self._feed_scope is not None:
            self._feed_scope.cancel()
        pending = list(self._results) if self._ordered else list(self._live)
        self._results.clear()
        self._live.clear()
        self._drop_backlog()
        for job in pending:
            job.cancel()

    def _pool_closed(self) -> None:
        """The pool is closing: whoever iterates gets :class:`PoolClosedError` next."""
        if self._error is None:
            self._error = PoolClosedError(
                f"pool {self._pool.name!r} closed before map() finished", pool=self._pool.name
            )
        if self._feed_scope is not None:
            self._feed_scope.cancel()
        pending = list(self._results) if self._ordered else list(self._live)
        self._drop_backlog()
        for job in pending:
            job.cancel()
        self._wake_consumer()

    def _drop_backlog(self) -> None:
        """Take this map's jobs out of the pool's backlog in one pass (never submitted)."""
        backlog = self._pool._backlog
        if not any(job._owner is self for job in backlog):
            return
        mine = [job for job in backlog if job._owner is self]
        keep = [job for job in backlog if job._owner is not self]
        backlog.clear()  # in place: the workers hold a reference to it
        backlog.extend(keep)
        for job in mine:
            job._finish_cancelled(counted=False)

    def _wake_consumer(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.set()

    def _job_done(self, job: JobHandle[Any]) -> None:
        if self._ordered:
            results = self._results
            if results and results[0] is job:
                self._wake_consumer()
        elif not self._finished:
            self._live.discard(job)
            self._results.append(job)
            self._wake_consumer()

    async def _feed(self) -> None:
        pool = self._pool
        iterable = self._iterable
        self._iterable = None
        try:
            with anyio.CancelScope() as scope:
                self._feed_scope = scope
                if self._finished:
                    return
                fast = self._put_nowait
                if isinstance(iterable, AsyncIterable):
                    async for item in iterable:
                        if not fast(item):
                            await self._submit(pool, item)
                else:
                    assert iterable is not None
                    for item in iterable:
                        if not fast(item):
                            await self._submit(pool, item)
                self._exhausted = True
        except _Stopped:
            pass
        except PoolClosedError as exc:
            if self._error is None:
                self._error = exc
        except Exception as exc:  # the input itself failed: raised after earlier results
            self._error = exc
        finally:
            self._feeding = False
            self._wake_consumer()

    def _put_nowait(self, item: A) -> bool:
        """Submit ``item`` unless the window is full (False) or the map or pool is done.

        The job goes to an idle worker, into the queue, or (queue full) to the pool's backlog,
        which workers drain into the queue: the feeder only ever waits for window room.
        """
        if self._outstanding >= self._window or self._finished:
            return False
        pool = self._pool
        if pool._closed:
            return False
        spare = self._spare
        if spare:  # reuse a consumed handle (see __init__)
            job = spare.pop()
            job._args[0] = item  # a one-item list: the worker's fn(*args) copies it
            job._state = QUEUED
        else:
            job = JobHandle(pool, self._fn, [item], self._is_async, self)
        # record it before it can finish
        if self._ordered:
            self._results.append(job)
        else:
            self._live.add(job)
        self._outstanding += 1
        backlog = pool._backlog
        if backlog:  # behind earlier jobs; stamped when admitted into the queue
            backlog.append(job)
        else:
            job.enqueued = perf_counter()
            if not pool._put_nowait(job):  # no idle worker and no room in the queue
                backlog.append(job)
        return True

    async def _submit(self, pool: WorkerPool, item: A) -> None:
        """Slow path: wait for window room, then submit."""
        while not self._put_nowait(item):
            if self._finished:  # stopped while we were runnable: cancellation may lag
                raise _Stopped
            if pool._closed:
                raise PoolClosedError(f"pool {pool.name!r} is closed", pool=pool.name)
            event = self._feeder = self._pool._new_waiter()
            await event.wait()
