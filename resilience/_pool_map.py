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
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio

from ._backend import Waiter
from ._errors import PoolClosedError
from ._pool_job import QUEUED, SUCCEEDED, JobHandle
from ._pool_scheduler import Scheduler

__all__ = ["MapFeed", "MapIterator"]

A = TypeVar("A")
T = TypeVar("T")


class _Stopped(Exception):
    """The consumer side finished while the feeder was about to submit."""


class MapIterator(Generic[A, T]):
    """Async iterator returned by :meth:`WorkerPool.map`; close it with ``aclose()``.

    Also an async context manager (``async with pool.map(...) as results``) that closes it.
    Once nothing references it any more, its map stops as if closed.
    """

    __slots__ = ("__weakref__", "_feed")

    def __init__(
        self,
        sched: Scheduler,
        fn: Callable[[A], Any],
        iterable: Iterable[A] | AsyncIterable[A],
        ordered: bool,
    ) -> None:
        # the pool, its feeder task and the jobs reference the feed, never this object: when
        # the consumer lets go of it, __del__ stops the feed
        self._feed: MapFeed[A, T] = MapFeed(sched, fn, iterable, ordered)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        feed = self._feed
        if not feed._running:
            if feed._finished:
                raise StopAsyncIteration
            feed._start()
        results = feed._results
        while True:
            if results:
                job = results[0]
                state = job.state
                if state >= SUCCEEDED:
                    results.popleft()
                    feed._outstanding -= 1
                    if feed._feeder is not None and feed._outstanding <= feed._refill_at:
                        feed._wake_feeder()
                    if state == SUCCEEDED:
                        value: T = job.value
                        job.value = None
                        feed._spare.append(job)
                        return value
                    feed.stop()
                    failed: T = job.outcome()  # raises the job's exception
                    return failed
            elif not feed._feeding and not feed._outstanding:
                feed.stop()
                if feed._error is not None:
                    raise feed._error
                if not feed._exhausted:
                    raise PoolClosedError(
                        f"pool {feed._sched.name!r} closed before map() finished",
                        pool=feed._sched.name,
                    )
                raise StopAsyncIteration
            if feed._consumer is not None:
                raise RuntimeError(
                    f"pool {feed._sched.name!r}: another task is already waiting on this map()"
                )
            event = feed._consumer = feed._sched.new_waiter()
            # ordered: wait on the head job itself, so the workers finishing the other jobs
            # have nobody to tell; with no job yet, the feeder wakes us when it submits one
            head = results[0] if results and feed._ordered else None
            if head is not None:
                if head.waiters is None:
                    head.waiters = [event]
                else:
                    head.waiters.append(event)
            try:
                await event.wait()
            finally:
                feed._consumer = None
                if head is not None and head.waiters is not None:
                    if event in head.waiters:
                        head.waiters.remove(event)
                    if not head.waiters:
                        head.waiters = None

    async def __aenter__(self) -> MapIterator[A, T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._feed.stop()

    async def aclose(self) -> None:
        """Stop reading input and cancel this map's jobs that were not consumed."""
        self._feed.stop()

    def __del__(self) -> None:
        feed = getattr(self, "_feed", None)
        if feed is not None and not feed._finished:  # same module: MapFeed is ours
            feed.abandon()


class MapFeed(Generic[A, T]):
    """The state of one map: what the pool, the feeder task and the jobs refer to."""

    __slots__ = (
        "_consumer", "_error", "_exhausted", "_feed_scope", "_feeder", "_feeding", "_finished",
        "_fn", "_is_async", "_iterable", "_live", "_ordered", "_outstanding", "_refill_at",
        "_results", "_running", "_sched", "_spare", "_window",
    )

    def __init__(
        self,
        sched: Scheduler,
        fn: Callable[[A], Any],
        iterable: Iterable[A] | AsyncIterable[A],
        ordered: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"pool {sched.name!r}: map() needs a callable, got {fn!r}")
        if not isinstance(iterable, Iterable | AsyncIterable):
            raise TypeError(
                f"pool {sched.name!r}: map() needs an iterable or async iterable, "
                f"got {type(iterable).__name__}"
            )
        self._sched = sched
        self._fn = fn
        self._is_async = iscoroutinefunction(fn)
        self._iterable: Iterable[A] | AsyncIterable[A] | None = iterable
        self._ordered = ordered
        self._window = 2 * (sched.workers + sched.queue_size)
        # wake a feeder waiting for window room once it can read a batch (half a queue): one
        # task switch per batch; what it reads goes to the pool's backlog if the queue is full
        self._refill_at = self._window - max(1, sched.queue_size // 2)
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

    # -- internals -----------------------------------------------------------------------------

    def _start(self) -> None:
        sched = self._sched
        try:
            tg = sched.check_open()
        except BaseException:
            self._finished = True
            raise
        self._running = self._feeding = True
        sched.maps.add(self)
        tg.start_soon(self._feed, name=f"resilience pool {sched.name!r} map feeder")

    def abandon(self) -> None:
        """The iterator was collected: stop soon, from the event loop's thread.

        Called from a finalizer, which may run in any thread and between any two bytecodes
        of the pool's own code: the stop itself is left to the loop.
        """
        call = self._sched.call_soon
        if call is not None:
            call(self.stop)

    def stop(self) -> None:
        """Consumer side is done: stop the feeder, cancel every job not consumed."""
        if self._finished:
            return
        self._finished = True
        self._running = False
        self._sched.maps.discard(self)
        if self._feed_scope is not None:
            self._feed_scope.cancel()
        pending = list(self._results) if self._ordered else list(self._live)
        self._results.clear()
        self._live.clear()
        self._spare.clear()  # they point back at us: free them now, not at the next GC
        self._drop_backlog()
        for job in pending:
            job.cancel()

    def pool_closed(self) -> None:
        """The pool is closing: whoever iterates gets :class:`PoolClosedError` next."""
        if self._error is None:
            self._error = PoolClosedError(
                f"pool {self._sched.name!r} closed before map() finished", pool=self._sched.name
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
        backlog = self._sched.backlog
        if not any(job.owner is self for job in backlog):
            return
        mine = [job for job in backlog if job.owner is self]
        keep = [job for job in backlog if job.owner is not self]
        backlog.clear()  # in place: the workers hold a reference to it
        backlog.extend(keep)
        for job in mine:
            job.finish_cancelled(counted=False)

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
        sched = self._sched
        while True:
            if self._finished:  # stopped while we were runnable: cancellation may lag
                raise _Stopped
            if sched.closed:
                raise PoolClosedError(f"pool {sched.name!r} is closed", pool=sched.name)
            room = self._window - self._outstanding
            if room > 0:
                return room
            event = self._feeder = sched.new_waiter()
            await event.wait()

    def _push(self, items: Iterable[A]) -> int:
        """Submit one job per item (the window has room for them all); how many there were.

        The scheduler hands them to idle workers, queues them, or (queue full) puts them in
        the backlog, which the workers drain into the queue: the feeder only ever waits for
        window room. Nothing here awaits, so nothing else runs while a batch is pushed.
        """
        sched = self._sched
        spare, fn, is_async = self._spare, self._fn, self._is_async
        callback = None if self._ordered else self._job_done
        jobs: list[JobHandle[Any]] = []
        add = jobs.append
        try:
            for item in items:
                if spare:  # reuse a consumed handle (see __init__)
                    job = spare.pop()
                    job.args[0] = item  # a one-item list: the worker's fn(*args) copies it
                    job.state = QUEUED
                else:
                    job = JobHandle(sched, fn, [item], is_async, self, callback)
                add(job)
        finally:  # also when the input raises: the jobs read so far are in flight
            n = len(jobs)
            self._outstanding += n
            if n:  # recorded before they can finish (nothing here awaits)
                if callback is None:
                    self._results.extend(jobs)
                else:
                    self._live.update(jobs)
                sched.put_batch(jobs)
                if self._consumer is not None and self._ordered and len(self._results) == n:
                    self._wake_consumer()  # it waits with no job to wait on: now there is one
        return n
