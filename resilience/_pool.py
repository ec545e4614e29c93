"""The worker pool: a fixed set of worker tasks fed through a bounded queue (section 2).

Design, for speed and for exact accounting:

* The queue is a plain ``deque`` of :class:`JobHandle` objects. ``submit_nowait`` either hands
  the job straight to an idle worker or appends it; nothing awaits on the fast path, so a
  burst of jobs costs no task switches until the queue is full or empty.
* Blocked submitters and idle workers wait in FIFO ``deque``\\ s, each on its own event. When
  a worker takes a job from the queue it admits the oldest blocked submitter into the freed
  room, so a waiting submitter never loses its turn and ``queue_size=0`` is a rendezvous.
* ``map`` reads ahead (within its window) into a backlog behind the blocked submitters;
  workers admit from it the same way, so a map keeps the queue full with no task switch
  per job and no worker ever waits for the map's feeder task to be scheduled.
* Each worker runs its jobs inside one cancel scope that it renews only after a job was
  cancelled: cancelling one running job costs nothing for the others.
* Metrics go to the shared :class:`~resilience._exporter.PoolSeries` of the pool's name
  (plain numbers under one lock per job); gauges are read from the live pool at scrape time.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from inspect import iscoroutinefunction
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar, overload

import anyio
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from ._backend import Waiter, waiter_factory
from ._errors import PoolClosedError, PoolFullError
from ._exporter import JOB_CANCEL, Hub
from ._pool_job import JobHandle, PoolStatistics
from ._pool_map import MapIterator
from ._pool_worker import ACCEPTED, REFUSED, WAITING, Submitter, Worker

__all__ = ["WorkerPool"]

logger = logging.getLogger("resilience.pool")

T = TypeVar("T")
A = TypeVar("A")


class WorkerPool:
    """``workers`` tasks running jobs from a queue of ``queue_size`` (see DESIGN section 2).

    Use as ``async with WorkerPool(...) as pool``. Leaving the block normally drains the pool;
    leaving it with an exception or cancellation drops queued jobs and cancels running ones,
    then re-raises that exception as is. ``metrics_registry`` is the prometheus-client
    ``CollectorRegistry`` to export to (prometheus-client's default one when ``None``).
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
        if not isinstance(name, str) or not name:
            raise ValueError(f"WorkerPool name must be a non-empty string, got {name!r}")
        self.name = name
        self.workers = workers
        self.queue_size = queue_size
        self._series = Hub.of(metrics_registry).pool(name)
        self._queue: deque[JobHandle[Any]] = deque()
        self._idle: deque[Worker] = deque()
        self._submitters: deque[Submitter] = deque()
        # jobs a map has read ahead while the queue was full: not submitted yet, they enter
        # the queue (after blocked submitters) as workers make room, so a map keeps the queue
        # full without a task switch per job
        self._backlog: deque[JobHandle[Any]] = deque()
        self._workers: list[Worker] = []
        self._closed = False
        self._started = False
        self._tg: TaskGroup | None = None
        self._drained: anyio.Event | None = None
        self._live_workers = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._maps: set[MapIterator[Any, Any]] = set()
        self._unretrieved: set[JobHandle[Any]] = set()
        self._fatal: BaseException | None = None
        self._new_waiter: Callable[[], Waiter] = anyio.Event
        # succeeded jobs are not counted: submitted = succeeded + failed + cancelled +
        # queued + running, at any moment
        self._submitted = self._failed = self._cancelled = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "new"
        return (
            f"<WorkerPool {self.name!r} {state}: workers={self.workers} "
            f"queue_size={self.queue_size} queued={len(self._queue)} busy={self.workers_busy}>"
        )

    # -- gauges read at scrape time (PoolGauges) ---------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._queue)

    @property
    def workers_busy(self) -> int:
        """Workers holding a job."""
        return sum(1 for worker in self._workers if worker.job is not None)

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of this pool's state and totals."""
        queued = len(self._queue)
        running = self.workers_busy
        return PoolStatistics(
            name=self.name,
            workers=self.workers,
            queue_size=self.queue_size,
            queued=queued,
            running=running,
            waiting_submitters=len(self._submitters),
            submitted=self._submitted,
            succeeded=self._submitted - self._failed - self._cancelled - queued - running,
            failed=self._failed,
            cancelled=self._cancelled,
            closed=self._closed,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> WorkerPool:
        if self._started:
            raise RuntimeError(f"WorkerPool {self.name!r} can only be entered once")
        self._started = True
        self._drained = anyio.Event()
        self._new_waiter = waiter_factory()
        self._limiter = anyio.CapacityLimiter(self.workers)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._live_workers = self.workers
        for _ in range(self.workers):
            # every worker starts out idle, so a fresh pool takes `workers` jobs at once
            worker = Worker(self, self._new_waiter())
            self._idle.append(worker)
            self._workers.append(worker)
            tg.start_soon(worker.main, name=f"resilience pool {self.name!r} worker")
        self._series.pools.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            try:
                await self.aclose()
            except BaseException:
                self._abort()
                await self._exit_task_group()
                self._log_unretrieved()
                if self._fatal is not None:
                    raise self._fatal from None
                raise
            await self._exit_task_group()
            self._log_unretrieved()
            if self._fatal is not None:
                raise self._fatal
            return False
        self._abort()
        await self._exit_task_group()
        self._log_unretrieved()
        if self._fatal is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
            raise self._fatal from None
        return False  # the block's own exception propagates unchanged

    async def aclose(self) -> None:
        """Close like a normal exit: refuse new jobs, let queued and running ones finish.

        Safe to call from any task and more than once; returns once the workers are done.
        """
        self._close()
        if self._drained is not None:
            await self._drained.wait()

    async def _exit_task_group(self) -> None:
        tg = self._tg
        assert tg is not None
        try:
            await tg.__aexit__(None, None, None)
        except BaseExceptionGroup as group:  # only on a bug in a worker: never wrap
            raise _first_error(group) from None

    def _close(self) -> None:
        """No new jobs; wake blocked submitters (refused) and idle workers (to exit)."""
        if self._closed:
            return
        self._closed = True
        self._refuse_submitters()
        for m in list(self._maps):
            m._pool_closed()
        idle = list(self._idle)
        self._idle.clear()
        for worker in idle:
            worker.handoff = None
            worker.event.set()
        if self._live_workers == 0 and self._drained is not None:
            self._drained.set()

    def _abort(self) -> None:
        """Close, drop queued jobs and cancel running ones."""
        self._close()
        dropped = list(self._queue)
        self._queue.clear()  # in place: the workers hold a reference to it
        for job in dropped:
            job._finish_cancelled()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _refuse_submitters(self) -> None:
        submitters = list(self._submitters)
        self._submitters.clear()
        for sub in submitters:
            sub.state = REFUSED
            sub.event.set()

    def _log_unretrieved(self) -> None:
        jobs, self._unretrieved = self._unretrieved, set()
        for job in jobs:
            logger.error(
                "pool %r: job %s failed and its exception was never retrieved",
                self.name, job._name(), exc_info=job._result,
            )

    # -- submitting ----------------------------------------------------------------------------

    @overload
    def submit_nowait(
        self, fn: Callable[..., Awaitable[T]], *args: Any
    ) -> JobHandle[T]: ...
    @overload
    def submit_nowait(self, fn: Callable[..., T], *args: Any) -> JobHandle[T]: ...

    def submit_nowait(self, fn: Callable[..., Any], *args: Any) -> JobHandle[Any]:
        """Queue a job now, or raise :class:`PoolFullError` (an ``anyio.WouldBlock``)."""
        job = self._new_job(fn, args)
        if not self._put_nowait(job):
            raise PoolFullError(
                f"pool {self.name!r} is full ({self.queue_size} jobs queued)", pool=self.name
            )
        return job

    @overload
    async def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> JobHandle[T]: ...
    @overload
    async def submit(self, fn: Callable[..., T], *args: Any) -> JobHandle[T]: ...

    async def submit(self, fn: Callable[..., Any], *args: Any) -> JobHandle[Any]:
        """Queue a job, waiting for room while the queue is full (backpressure).

        Raises :class:`PoolClosedError` if the pool is closed, or closes while waiting.
        """
        job = self._new_job(fn, args)
        if not self._put_nowait(job):
            await self._put_wait(job)
        return job

    @overload
    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...
    @overload
    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
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
        jobs are cancelled; closing the iterator early cancels them too.
        """
        return MapIterator(self, fn, iterable, ordered)

    def _check_open(self) -> TaskGroup:
        """The pool's task group; raises if the pool is closed or was never started."""
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} is closed", pool=self.name)
        if self._tg is None:
            raise RuntimeError(f"pool {self.name!r} is not running: use `async with` first")
        return self._tg

    def _new_job(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> JobHandle[Any]:
        self._check_open()
        return JobHandle(self, fn, args, iscoroutinefunction(fn))

    def _put_nowait(self, job: JobHandle[Any]) -> bool:
        """Hand ``job`` to an idle worker or queue it; False if the queue is full."""
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} is closed", pool=self.name)
        if self._idle:
            self._idle.popleft().take(job)
        elif len(self._queue) < self.queue_size:
            self._queue.append(job)
        else:
            return False
        self._submitted += 1
        return True

    async def _put_wait(self, job: JobHandle[Any]) -> None:
        """Wait until a worker admits ``job`` into the queue (or the pool closes)."""
        sub = Submitter(job, self._new_waiter())
        self._submitters.append(sub)
        try:
            await sub.event.wait()
        except BaseException:
            if sub.state == WAITING:
                self._submitters.remove(sub)
            elif sub.state == ACCEPTED:
                job.cancel()  # nobody holds its handle: do not run it
            raise
        if sub.state == REFUSED:
            raise PoolClosedError(
                f"pool {self.name!r} closed while waiting for queue room", pool=self.name
            )

    def _admit(self) -> None:
        """Room was made in the queue: let the oldest blocked submitter in."""
        sub = self._submitters.popleft()
        sub.state = ACCEPTED
        sub.job.enqueued = perf_counter()
        self._queue.append(sub.job)
        self._submitted += 1
        sub.event.set()

    def _unqueue(self, job: JobHandle[Any]) -> bool:
        """Take back a queued job being cancelled; False if it was never submitted (held by a
        blocked submitter or a map's backlog)."""
        try:
            self._queue.remove(job)
        except ValueError:
            for sub in self._submitters:
                if sub.job is job:
                    self._submitters.remove(sub)
                    sub.state = REFUSED
                    sub.event.set()
                    break
            else:
                with contextlib.suppress(ValueError):
                    self._backlog.remove(job)
            return False
        if self._submitters:
            self._admit()
        elif self._backlog:
            self._admit_backlog(perf_counter())
        return True

    def _admit_backlog(self, now: float) -> None:
        """Room was made in the queue and nobody is blocked: let a map's next job in."""
        job = self._backlog.popleft()
        job.enqueued = now
        self._queue.append(job)
        self._submitted += 1

    def _count_cancelled(self) -> None:
        self._cancelled += 1
        series = self._series
        with series.lock:
            series.jobs[JOB_CANCEL] += 1


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

