"""The worker pool: a fixed set of workers fed through a bounded queue.

:class:`WorkerPool` is the public face: validation, the ``async with`` lifecycle, typed
``submit``/``run``/``map``, statistics and logging. Who runs what is the
:class:`~resilience._pool_scheduler.Scheduler`'s business; ``map`` lives in
:mod:`resilience._pool_map`. Metrics go to the shared ``PoolSeries`` of the pool's name (plain
numbers, folded in batches); gauges are read from the live pool at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from inspect import iscoroutinefunction
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple, overload

import anyio
from prometheus_client import CollectorRegistry

from ._errors import PoolFullError
from ._exporter import Hub
from ._names import check_name
from ._pool_job import JobHandle, PoolStatistics
from ._pool_map import MapIterator
from ._pool_scheduler import IN_JOB_OF, Scheduler

__all__ = ["WorkerPool"]

logger = logging.getLogger("resilience.pool")

T = TypeVar("T")
A = TypeVar("A")
Ts = TypeVarTuple("Ts")


class WorkerPool:
    """``workers`` workers running jobs from a queue of ``queue_size``.

    Use as ``async with WorkerPool(...) as pool``. Leaving the block normally drains the pool;
    leaving it with an exception or cancellation drops queued jobs and cancels running ones,
    then re-raises that exception as is. ``async def`` jobs run in worker tasks, plain ``def``
    jobs in worker threads (at most ``workers`` at once). ``metrics_registry`` is the
    prometheus-client ``CollectorRegistry`` to export to (its default one when ``None``).
    """

    def __init__(
        self,
        workers: int = 10,
        queue_size: int = 100,
        name: str = "pool",
        *,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        for field, value, low in (("workers", workers, 1), ("queue_size", queue_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"WorkerPool {field} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"WorkerPool {field} must be >= {low}, got {value}")
        self.name = check_name(name, "pool")
        self.workers = workers
        self.queue_size = queue_size
        self._started = False
        self._sched = Scheduler(
            self.name, workers, queue_size, Hub.of(metrics_registry).pool(self.name)
        )

    def __repr__(self) -> str:
        s = self._sched
        state = "closed" if s.closed else "running" if self._started else "new"
        return (
            f"<WorkerPool {self.name!r} {state}: workers={self.workers} "
            f"queue_size={self.queue_size} queued={s.queued()} busy={s.busy()}>"
        )

    # -- gauges read at scrape time (PoolGauges) ---------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Jobs waiting in the queue."""
        return self._sched.queued()

    @property
    def workers_busy(self) -> int:
        """Workers holding a job."""
        return self._sched.busy()

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of this pool's state and totals."""
        s = self._sched
        queued, running = s.queued(), s.busy()
        return PoolStatistics(
            name=self.name,
            workers=self.workers,
            queue_size=self.queue_size,
            queued=queued,
            running=running,
            waiting_submitters=len(s.submitters),
            submitted=s.submitted,
            succeeded=max(s.submitted - s.failed - s.cancelled - queued - running, 0),
            failed=s.failed,
            cancelled=s.cancelled,
            closed=s.closed,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> WorkerPool:
        if self._started:
            raise RuntimeError(f"WorkerPool {self.name!r} can only be entered once")
        self._started = True
        await self._sched.start()
        self._sched.series.pools.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        s = self._sched
        if exc is None:
            try:
                await self.aclose()
            except BaseException as error:
                s.abort()
                await self._exit_task_group()
                self._log_unretrieved(s.fatal or error)
                if s.fatal is not None:
                    raise s.fatal from None
                raise
            await self._exit_task_group()
            self._log_unretrieved(s.fatal)
            if s.fatal is not None:
                raise s.fatal
            return False
        s.abort()
        await self._exit_task_group()
        if s.fatal is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
            self._log_unretrieved(s.fatal)
            raise s.fatal from None
        self._log_unretrieved(exc)
        return False  # the block's own exception propagates unchanged

    async def aclose(self) -> None:
        """Close like a normal exit: refuse new jobs, let queued and running ones finish.

        Safe to call from any task and more than once; returns once the workers are done.
        Raises :class:`RuntimeError` when called from one of this pool's own jobs (it would
        wait for itself).
        """
        s = self._sched
        if s in IN_JOB_OF.get():
            raise RuntimeError(
                f"a job of pool {self.name!r} cannot close its own pool or wait for it to "
                "drain: it would wait for itself"
            )
        s.close()
        if s.drained is not None:
            await s.drained.wait()

    async def _exit_task_group(self) -> None:
        tg = self._sched.tg
        assert tg is not None
        try:
            await tg.__aexit__(None, None, None)
        except BaseExceptionGroup as group:  # only on a bug in a worker: never wrap
            raise _first_error(group) from None

    def _log_unretrieved(self, propagating: BaseException | None) -> None:
        """Log the failures nobody retrieved, except the one leaving the block."""
        s = self._sched
        jobs, s.unretrieved = s.unretrieved, set()
        for job in jobs:
            if job.value is propagating:
                continue
            logger.error(
                "pool %r: job %s failed and its exception was never retrieved",
                self.name, job.name(), exc_info=job.value,
            )

    # -- submitting ----------------------------------------------------------------------------

    @overload
    def submit_nowait(
        self, fn: Callable[[*Ts], Awaitable[T]], /, *args: *Ts
    ) -> JobHandle[T]: ...
    @overload
    def submit_nowait(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> JobHandle[T]: ...

    def submit_nowait(self, fn: Callable[[*Ts], Any], /, *args: *Ts) -> JobHandle[Any]:
        """Queue a job now, or raise :class:`PoolFullError` (an ``anyio.WouldBlock``)."""
        job = self._new_job(fn, args)
        if not self._sched.put_nowait(job):
            raise PoolFullError(
                f"pool {self.name!r} is full ({self.queue_size} jobs queued)", pool=self.name
            )
        return job

    @overload
    async def submit(
        self, fn: Callable[[*Ts], Awaitable[T]], /, *args: *Ts
    ) -> JobHandle[T]: ...
    @overload
    async def submit(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> JobHandle[T]: ...

    async def submit(self, fn: Callable[[*Ts], Any], /, *args: *Ts) -> JobHandle[Any]:
        """Queue a job, waiting for room while the queue is full (backpressure).

        Raises :class:`PoolClosedError` if the pool is closed, or closes while waiting.
        """
        job = self._new_job(fn, args)
        if not self._sched.put_nowait(job):
            await self._sched.put_wait(job)
        return job

    @overload
    async def run(self, fn: Callable[[*Ts], Awaitable[T]], /, *args: *Ts) -> T: ...
    @overload
    async def run(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> T: ...

    async def run(self, fn: Callable[[*Ts], Any], /, *args: *Ts) -> Any:
        """Submit a job and wait for its result; cancelling the caller cancels the job."""
        job = await self.submit(fn, *args)
        try:
            return await job
        except BaseException:
            job.cancel()
            raise

    @overload
    def map(
        self,
        fn: Callable[[A], Awaitable[T]],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
    ) -> MapIterator[A, T]: ...
    @overload
    def map(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
    ) -> MapIterator[A, T]: ...

    def map(
        self,
        fn: Callable[[A], Any],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
    ) -> MapIterator[A, Any]:
        """Run ``fn`` over ``iterable`` (sync or async), yielding results as an async iterator.

        Input is read lazily: at most ``2 * (workers + queue_size)`` of this map's jobs are
        submitted and not yet consumed. Results come in input order (``ordered=False``:
        completion order). The first failure (in that order) is raised and the map's other
        jobs are cancelled; closing the iterator early (or dropping it) cancels them too.
        """
        return MapIterator(self._sched, fn, iterable, ordered)

    def _new_job(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> JobHandle[Any]:
        self._sched.check_open()
        return JobHandle(self._sched, fn, args, iscoroutinefunction(fn))


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first non-cancellation leaf of an exception group (else its first leaf)."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = exc.exceptions
        else:
            leaves.append(exc)
    for exc in leaves:
        if not isinstance(exc, cancelled):
            return exc
    return leaves[0]
