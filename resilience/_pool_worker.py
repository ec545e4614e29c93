"""The worker task of a :class:`~resilience.WorkerPool`, and a blocked submitter's record.

A worker runs jobs inside one cancel scope that it renews only after a job was cancelled
through its handle, so cancelling one job costs the others nothing. It records metrics
inline (one lock, a few additions per job) and hands each outcome to the job's handle.
"""

from __future__ import annotations

from inspect import isawaitable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from ._exporter import JOB_FAIL
from ._pool_job import FAILED, RUNNING, SUCCEEDED, JobHandle

if TYPE_CHECKING:
    from ._backend import Waiter
    from ._pool import WorkerPool

__all__ = ["Submitter", "Worker"]

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
    """One worker task: what it runs, and how to wake it or cancel its job."""

    __slots__ = ("cancelling", "event", "handoff", "job", "pool", "scope")

    def __init__(self, pool: WorkerPool, event: Waiter) -> None:
        self.pool = pool
        self.scope: anyio.CancelScope | None = None
        self.cancelling = False  # our scope was cancelled to stop the current job
        self.job: JobHandle[Any] | None = None
        self.event: Waiter = event  # set to wake us while idle
        self.handoff: JobHandle[Any] | None = None  # given to us while idle, not started

    def cancel_job(self, job: JobHandle[Any]) -> None:
        if self.job is not job:
            return
        if self.handoff is job:  # handed over but not started yet: take it back
            self.handoff = None
            self.job = None
            job._finish_cancelled()
        elif self.scope is not None:
            self.cancelling = True
            self.scope.cancel()

    def take(self, job: JobHandle[Any]) -> None:
        """Hand ``job`` to this idle worker (already removed from the idle list)."""
        self.handoff = job
        job._state = RUNNING
        self.job = job
        self.event.set()

    async def main(self) -> None:
        """The task body. Starts out idle: the pool registered us before we ran.

        Runs jobs until the pool is drained. The job loop is written out here, in the task's
        own frame, because it runs once per job: no helper calls and no extra frame for the
        job's coroutine to resume through.
        """
        pool = self.pool
        queue = pool._queue
        submitters = pool._submitters
        backlog = pool._backlog
        series = pool._series
        lock = series.lock
        jobs = series.jobs
        # metric samples are appended raw and folded into the histograms in batches
        wait_add = series.queue_wait.pending.append
        run_pending = series.job_duration.pending
        run_add = run_pending.append
        fold_at = series.job_duration.FOLD_AT
        cancelled_exc = anyio.get_cancelled_exc_class()
        parked = True  # registered as idle before we first ran
        now = perf_counter()
        try:
            while True:  # one cancel scope per round; renewed after a job was cancelled
                with anyio.CancelScope() as scope:
                    self.scope = scope
                    self.cancelling = False
                    while not self.cancelling:
                        job = self.handoff
                        if job is not None:  # handed over by a submitter while we waited
                            self.handoff = None
                        elif queue:
                            job = queue.popleft()
                            if submitters:
                                pool._admit()
                            elif backlog:  # Pool._admit_backlog, inlined
                                waiting = backlog.popleft()
                                waiting.enqueued = now
                                queue.append(waiting)
                                pool._submitted += 1
                        elif submitters:  # rendezvous (queue_size=0): take the job directly
                            sub = submitters.popleft()
                            sub.state = ACCEPTED
                            pool._submitted += 1
                            sub.event.set()
                            job = sub.job
                            job.enqueued = now
                        elif backlog:  # a map read ahead while the queue was full
                            job = backlog.popleft()
                            pool._submitted += 1
                            job.enqueued = now
                        elif pool._closed:
                            return
                        else:
                            if parked:
                                parked = False
                            else:
                                self.event = pool._new_waiter()
                                pool._idle.append(self)
                            try:
                                await self.event.wait()
                            except BaseException:
                                dropped = self.handoff
                                if dropped is not None:  # a job was given to us: dropped
                                    self.handoff = None
                                    self.job = None
                                    dropped._finish_cancelled()
                                elif self in pool._idle:
                                    pool._idle.remove(self)
                                raise
                            now = perf_counter()
                            if self.handoff is None and pool._closed:
                                return  # woken by close with nothing to do
                            continue  # run the handed-over job (or look again)
                        job._state = RUNNING  # (a handed-over job already is)
                        self.job = job
                        try:
                            if job._is_async:
                                value = await job._fn(*job._args)
                            else:
                                value = await anyio.to_thread.run_sync(
                                    job._fn, *job._args, limiter=pool._limiter
                                )
                                if isawaitable(value):
                                    value = await value
                        except cancelled_exc:
                            wait_add(now - job.enqueued)
                            self.job = None
                            job._finish_cancelled()
                            raise
                        except BaseException as exc:
                            end = perf_counter()
                            job._result = exc
                            job._state = FAILED
                            pool._failed += 1
                            pool._unretrieved.add(job)
                            with lock:  # samples and count together: successes are derived
                                wait_add(now - job.enqueued)
                                run_add(end - now)
                                jobs[JOB_FAIL] += 1
                            if not isinstance(exc, Exception):  # KeyboardInterrupt...
                                pool._fatal = exc
                                pool._abort()
                        else:
                            end = perf_counter()
                            job._result = value
                            job._state = SUCCEEDED
                            wait_add(now - job.enqueued)
                            run_add(end - now)
                        now = end
                        if len(run_pending) >= fold_at:
                            with lock:
                                series.fold()
                        self.job = None
                        if job._waiters is not None or job._callback is not None:
                            job._wake()  # someone awaits it, or an unordered map
                parked = False  # a job was cancelled through its handle: fresh scope
        finally:
            pool._live_workers -= 1
            if pool._live_workers == 0 and pool._drained is not None:
                pool._drained.set()
