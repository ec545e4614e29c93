"""The lane of a :class:`~resilience.WorkerPool`: plain-def jobs and the threads that run them.

A worker that takes a plain-def job hands it to a worker thread (``anyio.to_thread``), and
that thread keeps taking the next plain-def jobs from the lane itself until the lane is empty:
a stream of them costs one thread hop per stream, not per job, and no thread ever waits for
the event loop to give it work. Outcomes (the exception object itself, untouched) are queued
in ``finished`` and the event loop is told once per batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from inspect import isawaitable
from time import perf_counter
from typing import Any, Protocol

import anyio

from ._pool_job import RUNNING, JobHandle

__all__ = ["Holder", "Lane", "Outcome"]

#: What a thread reports per job: (job, ok, value or exception, queue wait, run time).
Outcome = tuple[JobHandle[Any], bool, Any, float, float]


class Holder(Protocol):
    """The worker a thread runs jobs for."""

    job: JobHandle[Any] | None
    in_thread: bool
    started: bool


class Lane(deque[JobHandle[Any]]):
    """Plain-def jobs waiting for a thread (changed only under ``lock``); their outcomes.

    A ``deque`` itself, so that the event loop's checks (``if lane``, ``len(lane)``) cost
    what they cost on a plain one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.finished: deque[Outcome] = deque()
        self.pending = False  # the event loop has been told and not drained yet
        self.notify: Callable[[], None] | None = None  # thread-safe: drain soon, in the loop

    def put(self, job: JobHandle[Any]) -> None:
        with self.lock:
            self.append(job)

    def put_all(self, jobs: Iterable[JobHandle[Any]]) -> None:
        with self.lock:
            self.extend(jobs)

    def take_older(self, queue: deque[JobHandle[Any]]) -> JobHandle[Any] | None:
        """Our head, if it entered before ``queue``'s head (or ``queue`` is empty)."""
        with self.lock:
            if self and (not queue or self[0].enqueued <= queue[0].enqueued):
                return self.popleft()
        return None

    def withdraw(self, job: JobHandle[Any]) -> bool:
        """Take ``job`` back before a thread starts it; False if it is not here."""
        with self.lock:
            try:
                self.remove(job)
            except ValueError:
                return False
        return True

    def drop_all(self, holders: Iterable[Holder]) -> list[JobHandle[Any]]:
        """Empty the lane (returned) and doom the jobs the threads run now."""
        with self.lock:
            dropped = list(self)
            self.clear()
            for holder in holders:
                if holder.in_thread and holder.job is not None:
                    holder.job.doomed = True
        return dropped

    def run(self, holder: Holder, job: JobHandle[Any]) -> None:
        """In a worker thread: run ``job``, then the lane's next jobs until it is empty."""
        holder.started = True
        lock, finished, notify = self.lock, self.finished, self.notify
        assert notify is not None
        while True:
            start = perf_counter()
            try:
                value = job.fn(*job.args)
                if isawaitable(value):  # a plain def that returned an awaitable
                    value = anyio.from_thread.run(_await, value)
                ok = True
            except BaseException as exc:
                value, ok = exc, False
            end = perf_counter()
            with lock:
                nxt = self.popleft() if self else None
                if nxt is not None:
                    nxt.state = RUNNING
                holder.job = nxt
            finished.append((job, ok, value, start - job.enqueued, end - start))
            if not self.pending:
                self.pending = True
                notify()
            if nxt is None:
                return
            job = nxt


async def _await(value: Awaitable[Any]) -> Any:
    return await value
