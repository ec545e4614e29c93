"""``WorkerPool.map``: a lazy, bounded, cancellable async iterator of job results.

A feeder task (running in the pool's task group) reads the input while this map has fewer
than ``2 * (workers + queue_size)`` jobs read and not yet consumed, so memory is bounded by
the pool, not by the input. (Twice the pool's capacity, so that results waiting for the
consumer do not keep the queue from being refilled.) It reads a sync input in batches as large
as that window allows; what does not fit in the queue waits in the pool's backlog, which the
workers drain into the queue as they take jobs, so the feeder only ever waits for the
consumer. An ordered map's consumer waits on the head job itself. Handles of consumed results
are reused: a steady stream allocates nothing per job that outlives the job.
"""
from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from inspect import iscoroutinefunction
from itertools import islice
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from ._errors import PoolClosedError
from ._pool_job import QUEUED, SUCCEEDED, JobHandle

if TYPE_CHECKING:
    from ._backend import Waiter
    from ._pool import WorkerPool

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
                state = job._state
                if state >= SUCCEEDED:
                    results.popleft()
                    self._outstanding -= 1
                    if self._feeder is not None and self._outstanding <= self._refill_at:
                        self._wake_feeder()
                    if state == SUCCEEDED:
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
            # ordered: wait on the head job itself, so the workers finishing the other jobs
            # have nobody to tell; with no job yet, the feeder wakes us when it submits one
            head = results[0] if results and self._ordered else None
            if head is not None:
                if head._waiters is None:
                    head._waiters = [event]
                else:
                    head._waiters.append(event)
            try:
                await event.wait()
            finally:
                self._consumer = None
                if head is not None and head._waiters is not None:
                    if event in head._waiters:
                        head._waiters.remove(event)
                    if not head._waiters:
                        head._waiters = None

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
        self._spare.clear()  # they point back at us: free them now, not at the next GC
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

    def _wake_feeder(self) -> None:
        feeder = self._feeder
        if feeder is not None:
            self._feeder = None
            feeder.set()

    def _wake_consumer(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.set()

    def _job_done(self, job: JobHandle[Any]) -> None:
        """Unordered only: a job finished, queue its result in finishing order."""
        if not self._finished:
            self._live.discard(job)
            self._results.append(job)
            self._wake_consumer()

    async def _feed(self) -> None:
        iterable = self._iterable
        self._iterable = None
        try:
            with anyio.CancelScope() as scope:
                self._feed_scope = scope
                if self._finished:
                    return
                if isinstance(iterable, AsyncIterable):
                    async for item in iterable:
                        await self._wait_room()
                        self._push((item,))
                else:
                    assert iterable is not None
                    items = iter(iterable)
                    while True:  # a batch at a time: as many as the window has room for
                        room = await self._wait_room()
                        if self._push(islice(items, room)) < room:
                            break  # the input is exhausted
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

    async def _wait_room(self) -> int:
        """Wait for room in the window and return how much; the consumer wakes us."""
        pool = self._pool
        while True:
            if self._finished:  # stopped while we were runnable: cancellation may lag
                raise _Stopped
            if pool._closed:
                raise PoolClosedError(f"pool {pool.name!r} is closed", pool=pool.name)
            room = self._window - self._outstanding
            if room > 0:
                return room
            event = self._feeder = pool._new_waiter()
            await event.wait()

    def _push(self, items: Iterable[A]) -> int:
        """Submit one job per item (the window has room for them all); how many there were.

        A job goes to an idle worker, into the queue, or (queue full) to the pool's backlog,
        which the workers drain into the queue: the feeder only ever waits for window room.
        Nothing here awaits, so nothing else runs while a batch is pushed.
        """
        pool = self._pool
        put, backlog = pool._put_nowait, pool._backlog
        spare, fn, is_async = self._spare, self._fn, self._is_async
        if self._ordered:
            record, callback = self._results.append, None
        else:
            record, callback = self._live.add, self._job_done
        n = 0
        try:
            for item in items:
                if spare:  # reuse a consumed handle (see __init__)
                    job = spare.pop()
                    job._args[0] = item  # a one-item list: the worker's fn(*args) copies it
                    job._state = QUEUED
                else:
                    job = JobHandle(pool, fn, [item], is_async, self, callback)
                record(job)  # before it can finish
                n += 1
                if backlog:  # behind earlier jobs; stamped when admitted into the queue
                    backlog.append(job)
                else:
                    job.enqueued = perf_counter()
                    if not put(job):  # no idle worker and no room in the queue
                        backlog.append(job)
        finally:  # also when the input raises: the jobs pushed so far are in flight
            self._outstanding += n
            if n and self._consumer is not None and self._ordered and len(self._results) == n:
                self._wake_consumer()  # it waits with no job to wait on: now there is one
        return n
