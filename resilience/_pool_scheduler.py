"""The scheduler of a :class:`~resilience.WorkerPool`: who runs what next.

One object owns the queue, the idle workers, the blocked submitters and the maps' backlog;
:meth:`Scheduler.next_job` is the one place that decides which job a worker takes. A job goes
straight to an idle worker or is appended, with no await on that path; a worker taking a job
admits the oldest blocked submitter (then the backlog) into the freed room, so nobody loses
its turn and ``queue_size=0`` is a rendezvous. ``async def`` jobs wait in ``queue``, plain
``def`` jobs in the :class:`~resilience._pool_lane.Lane`, whose worker threads take them
themselves; their outcomes are delivered in batches by :meth:`Scheduler.drain`. A worker
renews its cancel scope only after a job was cancelled through its handle.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from time import perf_counter
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from ._backend import Waiter, loop_caller, waiter_factory
from ._errors import PoolClosedError
from ._exporter import JOB_CANCEL, JOB_FAIL, PoolSeries
from ._pool_job import FAILED, RUNNING, SUCCEEDED, JobHandle
from ._pool_lane import Lane

__all__ = ["IN_JOB_OF", "Scheduler"]

#: The schedulers whose job the current task (or thread) runs in, innermost last: a worker sets
#: it in its own context, so the tasks and threads a job starts inherit it.
IN_JOB_OF: ContextVar[tuple[Scheduler, ...]] = ContextVar("resilience_pool_job", default=())

# Submitter states.
WAITING, ACCEPTED, REFUSED = range(3)


class Submitter:
    """A ``submit`` call waiting for queue room."""

    __slots__ = ("event", "job", "state")

    def __init__(self, job: JobHandle[Any], event: Waiter) -> None:
        self.job = job
        self.event = event
        self.state = WAITING


class Worker:
    """One worker: the job it holds, how to wake it, and whether its thread runs the job."""

    __slots__ = ("cancelling", "event", "handoff", "in_thread", "job", "scope", "started")

    def __init__(self, event: Waiter) -> None:
        self.scope: anyio.CancelScope | None = None
        self.cancelling = False  # our scope was cancelled to stop the current job
        self.job: JobHandle[Any] | None = None  # set by our thread too (under lane.lock)
        self.event = event  # set to wake us while idle
        self.handoff: JobHandle[Any] | None = None  # given to us while idle, not started
        self.in_thread = False  # our thread runs plain-def jobs; we wait for it
        self.started = False  # that thread has begun (it may be cancelled before)

    def take(self, job: JobHandle[Any]) -> None:
        """Hand ``job`` to this idle worker (already removed from the idle list)."""
        self.handoff = job
        job.state = RUNNING
        self.job = job
        self.event.set()

    def cancel_job(self, job: JobHandle[Any]) -> None:
        """Cancel ``job`` if this worker's task holds it (not for a thread's job)."""
        if self.job is not job:
            return
        if self.handoff is job:  # handed over but not started yet: take it back
            self.handoff = None
            self.job = None
            job.finish_cancelled()
        elif self.scope is not None:
            self.cancelling = True
            self.scope.cancel()


class Closable(Protocol):
    """What a map registers to hear that the pool closes."""

    def pool_closed(self) -> None: ...


class Scheduler:
    """Queue, idle workers, blocked submitters and backlog of one pool, and its workers."""

    def __init__(self, name: str, workers: int, queue_size: int, series: PoolSeries) -> None:
        self.name = name
        self.workers = workers
        self.queue_size = queue_size
        self.series = series
        self.queue: deque[JobHandle[Any]] = deque()  # async jobs
        self.lane = Lane()  # plain-def jobs, shared with the worker threads
        self.idle: deque[Worker] = deque()
        self.submitters: deque[Submitter] = deque()
        # jobs a map has read ahead while the queue was full: not submitted yet, they enter
        # the queue (after blocked submitters) as workers make room, so a map keeps the queue
        # full without a task switch per job
        self.backlog: deque[JobHandle[Any]] = deque()
        self.worker_list: list[Worker] = []
        self.maps: set[Closable] = set()
        self.unretrieved: set[JobHandle[Any]] = set()
        self.fatal: BaseException | None = None
        self.closed = False
        self.tg: TaskGroup | None = None
        self.drained: anyio.Event | None = None
        self.live_workers = 0
        self.limiter: anyio.CapacityLimiter | None = None
        self.new_waiter: Callable[[], Waiter] = anyio.Event
        self.call_soon: Callable[[Callable[[], object]], None] | None = None
        # succeeded jobs are not counted: submitted = succeeded + failed + cancelled +
        # queued + running, at any moment
        self.submitted = self.failed = self.cancelled = 0

    # -- state -----------------------------------------------------------------------------------

    def queued(self) -> int:
        return len(self.queue) + len(self.lane)

    def busy(self) -> int:
        return sum(1 for worker in self.worker_list if worker.job is not None)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.drained = anyio.Event()
        self.new_waiter = waiter_factory()
        self.call_soon = call_soon = loop_caller()
        self.lane.notify = partial(call_soon, self.drain)
        self.limiter = anyio.CapacityLimiter(self.workers)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self.tg = tg
        self.live_workers = self.workers
        for _ in range(self.workers):
            # every worker starts out idle, so a fresh pool takes `workers` jobs at once
            worker = Worker(self.new_waiter())
            self.idle.append(worker)
            self.worker_list.append(worker)
            tg.start_soon(self.work, worker, name=f"resilience pool {self.name!r} worker")

    def check_open(self) -> TaskGroup:
        """The task group; raises if the pool is closed or was never started."""
        if self.closed:
            raise PoolClosedError(f"pool {self.name!r} is closed", pool=self.name)
        if self.tg is None:
            raise RuntimeError(f"pool {self.name!r} is not running: use `async with` first")
        return self.tg

    def close(self) -> None:
        """No new jobs; wake blocked submitters (refused) and idle workers (to exit)."""
        if self.closed:
            return
        self.closed = True
        submitters = list(self.submitters)
        self.submitters.clear()
        for sub in submitters:
            sub.state = REFUSED
            sub.event.set()
        for m in list(self.maps):
            m.pool_closed()
        idle = list(self.idle)
        self.idle.clear()
        for worker in idle:
            worker.handoff = None
            worker.event.set()
        if self.live_workers == 0 and self.drained is not None:
            self.drained.set()

    def abort(self) -> None:
        """Close, drop queued jobs and cancel running ones (a thread's job runs to its end)."""
        self.close()
        dropped = list(self.queue)
        self.queue.clear()
        dropped += self.lane.drop_all(self.worker_list)
        for job in dropped:
            job.finish_cancelled()
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    # -- submitting ------------------------------------------------------------------------------

    def put_nowait(self, job: JobHandle[Any]) -> bool:
        """Hand ``job`` to an idle worker or queue it; False if the queue is full."""
        if self.closed:
            raise PoolClosedError(f"pool {self.name!r} is closed", pool=self.name)
        if self.idle:
            self.idle.popleft().take(job)
        elif len(self.queue) + len(self.lane) < self.queue_size:
            if job.is_async:
                self.queue.append(job)
            else:
                self.lane.put(job)
        else:
            return False
        self.submitted += 1
        return True

    def put_batch(self, jobs: list[JobHandle[Any]]) -> None:
        """Submit a map's jobs (all of one function): to idle workers, into the queue while
        it has room, the rest to the backlog, behind what waits there already."""
        if self.closed:
            raise PoolClosedError(f"pool {self.name!r} is closed", pool=self.name)
        backlog = self.backlog
        if backlog:  # stamped when admitted into the queue
            backlog.extend(jobs)
            return
        now = perf_counter()
        idle = self.idle
        n = len(jobs)
        i = 0
        while idle and i < n:
            job = jobs[i]
            job.enqueued = now
            idle.popleft().take(job)
            i += 1
        room = min(self.queue_size - len(self.queue) - len(self.lane), n - i)
        if room > 0:
            batch = jobs[i:i + room] if i or room < n else jobs
            for job in batch:
                job.enqueued = now
            if batch[0].is_async:
                self.queue.extend(batch)
            else:
                self.lane.put_all(batch)
            i += room
        self.submitted += i
        if i < n:
            backlog.extend(jobs[i:])

    async def put_wait(self, job: JobHandle[Any]) -> None:
        """Wait until a worker admits ``job`` into the queue (or the pool closes)."""
        sub = Submitter(job, self.new_waiter())
        self.submitters.append(sub)
        try:
            await sub.event.wait()
        except BaseException:
            if sub.state == WAITING:
                self.submitters.remove(sub)
            elif sub.state == ACCEPTED:
                job.cancel()  # nobody holds its handle: do not run it
            raise
        if sub.state == REFUSED:
            raise PoolClosedError(
                f"pool {self.name!r} closed while waiting for queue room", pool=self.name
            )

    def _enqueue(self, job: JobHandle[Any]) -> None:
        if self.idle:  # room made by a thread's lane pop (see drain): no idler left behind
            self.idle.popleft().take(job)
        elif job.is_async:
            self.queue.append(job)
        else:
            self.lane.put(job)

    def _admit(self, now: float) -> bool:
        """Room was made in the queue: let the oldest blocked submitter in, else a map's next
        read-ahead job. False if nobody waits."""
        if self.submitters:
            sub = self.submitters.popleft()
            sub.state = ACCEPTED
            sub.event.set()
            job = sub.job
        elif self.backlog:
            job = self.backlog.popleft()
        else:
            return False
        job.enqueued = now
        self._enqueue(job)
        self.submitted += 1
        return True

    def next_job(self, now: float) -> JobHandle[Any] | None:
        """The job a free worker runs next (already counted as submitted), or None.

        The older of the queue's and the lane's heads; the room it frees goes to a blocked
        submitter or the backlog. With nothing queued: a blocked submitter's job directly
        (the rendezvous of ``queue_size=0``), else a map's read-ahead job.
        """
        queue, lane = self.queue, self.lane
        if lane:  # plain-def jobs wait too: the older head goes first
            job = lane.take_older(queue)
            if job is None and queue:
                job = queue.popleft()
        elif queue:
            job = queue.popleft()
        else:
            job = None
        if job is not None:
            if self.submitters:
                self._admit(now)
            elif self.backlog:  # self._admit(now), inlined: once per job of a busy map
                waiting = self.backlog.popleft()
                waiting.enqueued = now
                if waiting.is_async:
                    queue.append(waiting)
                else:
                    lane.put(waiting)
                self.submitted += 1
            return job
        if self.submitters:
            sub = self.submitters.popleft()
            sub.state = ACCEPTED
            sub.event.set()
            job = sub.job
        elif self.backlog:
            job = self.backlog.popleft()
        else:
            return None
        job.enqueued = now
        self.submitted += 1
        return job

    def unqueue(self, job: JobHandle[Any]) -> bool:
        """Take back a queued job being cancelled; False if it was never submitted (held by a
        blocked submitter or a map's backlog)."""
        try:
            if job.is_async:
                self.queue.remove(job)
            elif not self.lane.withdraw(job):
                raise ValueError
        except ValueError:
            for sub in self.submitters:
                if sub.job is job:
                    self.submitters.remove(sub)
                    sub.state = REFUSED
                    sub.event.set()
                    break
            else:
                try:
                    self.backlog.remove(job)
                except ValueError:
                    pass
            return False
        self._admit(perf_counter())
        return True

    def cancel_running(self, job: JobHandle[Any]) -> None:
        for worker in self.worker_list:  # rare: no back-reference kept per job
            if worker.job is job:
                if worker.in_thread:
                    job.doomed = True  # a thread cannot be interrupted: drop its outcome
                else:
                    worker.cancel_job(job)
                return

    def count_cancelled(self) -> None:
        self.cancelled += 1
        series = self.series
        with series.lock:
            series.jobs[JOB_CANCEL] += 1

    def fail(self, job: JobHandle[Any], exc: BaseException, waited: float, ran: float) -> None:
        """Record a failed job; a BaseException that is no Exception aborts the pool."""
        job.value = exc
        job.state = FAILED
        self.failed += 1
        self.unretrieved.add(job)
        series = self.series
        with series.lock:  # samples and count together: successes are derived
            series.queue_wait.pending.append(waited)
            series.job_duration.pending.append(ran)
            series.jobs[JOB_FAIL] += 1
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit...
            if self.fatal is None:
                self.fatal = exc
            self.abort()

    # -- the workers -----------------------------------------------------------------------------

    async def work(self, worker: Worker) -> None:
        """A worker task's body. Starts out idle: :meth:`start` registered it before it ran.

        The async-job loop is written out here, in the task's own frame, because it runs
        once per job: no extra frame for the job's coroutine to resume through.
        """
        next_job = self.next_job
        series = self.series
        lock = series.lock
        wait_add = series.queue_wait.pending.append  # raw samples, folded in batches
        run_pending = series.job_duration.pending
        run_add = run_pending.append
        fold_at = series.job_duration.FOLD_AT
        cancelled_exc = anyio.get_cancelled_exc_class()
        IN_JOB_OF.set((*IN_JOB_OF.get(), self))
        parked = True  # registered as idle before we first ran
        now = perf_counter()
        try:
            while True:  # one cancel scope per round; renewed after a job was cancelled
                with anyio.CancelScope() as scope:
                    worker.scope = scope
                    worker.cancelling = False
                    while not worker.cancelling:
                        job = worker.handoff
                        if job is not None:  # handed over while we waited
                            worker.handoff = None
                        else:
                            job = next_job(now)
                            if job is None:
                                worker.job = None
                                if self.closed:
                                    return
                                # parked as an idle worker until handed a job or closed
                                # (inline: a worker parks every few jobs of a busy map)
                                if not parked:
                                    worker.event = self.new_waiter()
                                    self.idle.append(worker)
                                parked = False
                                try:
                                    await worker.event.wait()
                                except BaseException:
                                    self._unpark(worker)
                                    raise
                                now = perf_counter()
                                if worker.handoff is None and self.closed:
                                    return  # woken by close with nothing to do
                                continue
                            job.state = RUNNING
                            worker.job = job
                        if not job.is_async:
                            await self._run_in_thread(worker, job)  # clears worker.job
                            now = perf_counter()
                            continue
                        try:
                            value = await job.fn(*job.args)
                        except cancelled_exc:
                            wait_add(now - job.enqueued)
                            worker.job = None
                            job.finish_cancelled()
                            raise
                        except BaseException as exc:
                            end = perf_counter()
                            self.fail(job, exc, now - job.enqueued, end - now)
                        else:
                            end = perf_counter()
                            job.value = value
                            job.state = SUCCEEDED
                            wait_add(now - job.enqueued)
                            run_add(end - now)
                        now = end
                        if len(run_pending) >= fold_at:
                            with lock:
                                series.fold()
                        # worker.job stays until the next job replaces it or we park: no
                        # await in between, so nobody sees it
                        if job.waiters is not None or job.on_done is not None:
                            job.wake()  # someone awaits it, or an unordered map
                parked = False  # a job was cancelled through its handle: fresh scope
        finally:
            self.live_workers -= 1
            if self.live_workers == 0 and self.drained is not None:
                self.drained.set()

    def _unpark(self, worker: Worker) -> None:
        """An idle worker was cancelled: drop the job handed to it, or leave the idle list."""
        dropped = worker.handoff
        if dropped is not None:
            worker.handoff = None
            worker.job = None
            dropped.finish_cancelled()
        elif worker in self.idle:
            self.idle.remove(worker)

    async def _run_in_thread(self, worker: Worker, job: JobHandle[Any]) -> None:
        """Run plain-def ``job``, then the lane's next ones, in one worker thread."""
        worker.in_thread = True
        worker.started = False
        try:
            await anyio.to_thread.run_sync(self.lane.run, worker, job, limiter=self.limiter)
        finally:
            worker.in_thread = False
            worker.job = None
            if not worker.started:  # cancelled before the thread began: the job never ran
                job.finish_cancelled()
            self.drain()  # the thread is done: all it reported is in lane.finished

    def drain(self) -> None:
        """In the event loop: deliver the outcomes the threads reported, refill the room."""
        self.lane.pending = False
        finished = self.lane.finished
        if not finished:
            return
        series = self.series
        wait_add = series.queue_wait.pending.append
        run_pending = series.job_duration.pending
        now = perf_counter()
        while finished:
            job, ok, value, waited, ran = finished.popleft()
            if job.doomed:
                wait_add(waited)
                job.finish_cancelled()
                continue
            if not ok:
                self.fail(job, value, waited, ran)
            else:
                job.value = value
                job.state = SUCCEEDED
                wait_add(waited)
                run_pending.append(ran)
            if job.waiters is not None or job.on_done is not None:
                job.wake()
        if len(run_pending) >= series.job_duration.FOLD_AT:
            with series.lock:
                series.fold()
        room = self.queue_size - len(self.queue) - len(self.lane)
        while room > 0 and self._admit(now):
            room -= 1
