"""The job handle of a :class:`~resilience.WorkerPool` and the pool's statistics snapshot.

A handle is a small slotted object that travels through the pool's queue itself: it holds
the function, its arguments, and later its outcome. Nothing is allocated for waking a waiter
unless somebody actually waits for a job that is not finished yet. Its attributes without a
leading underscore are the scheduler's bookkeeping (the scheduler lives in another module);
users only rely on the methods.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Generic, Protocol, TypeVar

from ._backend import Waiter
from ._errors import PoolClosedError

__all__ = ["CANCELLED", "FAILED", "QUEUED", "RUNNING", "SUCCEEDED", "JobHandle", "JobOwner",
           "PoolStatistics"]

T = TypeVar("T")

# Job states, in the order a job moves through them.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = range(5)
_STATE_NAMES = ("queued", "running", "succeeded", "failed", "cancelled")


class JobOwner(Protocol):
    """What a handle needs from the scheduler that runs it."""

    name: str
    fatal: BaseException | None
    unretrieved: set[JobHandle[Any]]
    new_waiter: Callable[[], Waiter]

    def unqueue(self, job: JobHandle[Any]) -> bool: ...

    def cancel_running(self, job: JobHandle[Any]) -> None: ...

    def count_cancelled(self) -> None: ...


class JobHandle(Generic[T]):
    """One job submitted to a pool. ``await handle`` gives its value or re-raises its error.

    Awaiting a job that the pool dropped or cancelled (or that :meth:`cancel` stopped)
    raises :class:`~resilience.PoolClosedError`. Awaiting only observes: cancelling the task
    that awaits does not cancel the job (use :meth:`cancel` for that).
    """

    __slots__ = (
        "__weakref__",
        "args",
        "doomed",
        "enqueued",
        "fn",
        "is_async",
        "on_done",
        "owner",
        "sched",
        "state",
        "value",
        "waiters",
    )

    def __init__(
        self,
        sched: JobOwner,
        fn: Callable[..., Any],
        args: tuple[Any, ...] | list[Any],
        is_async: bool,
        owner: object = None,
        on_done: Callable[[JobHandle[Any]], None] | None = None,
    ) -> None:
        self.sched = sched
        self.fn = fn
        self.args: Any = args  # a tuple, or the one-item list a map job reuses
        self.is_async = is_async
        self.owner = owner  # the map that made it, if any
        self.on_done = on_done  # told when it finishes (an unordered map)
        self.state = QUEUED
        self.value: Any = None  # the return value, or the exception once FAILED
        self.waiters: list[Waiter] | None = None  # one per task awaiting the handle
        self.doomed = False  # cancelled while running in a thread: its outcome is dropped
        self.enqueued = perf_counter()  # when it entered the queue (queue-wait metric)

    def __repr__(self) -> str:
        return (
            f"<JobHandle {self.name()} of pool {self.sched.name!r}: "
            f"{_STATE_NAMES[self.state]}>"
        )

    def name(self) -> str:
        """The job function's qualified name (for logs and errors)."""
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def done(self) -> bool:
        """True once the job has finished: succeeded, failed, dropped or cancelled."""
        return self.state >= SUCCEEDED

    def cancelled(self) -> bool:
        """True if the job was cancelled or dropped before finishing."""
        return self.state == CANCELLED

    def cancel(self) -> bool:
        """Cancel the job: a queued job is dropped, a running one is cancelled.

        Returns False if the job had already finished. A running job that finishes before
        it reaches a checkpoint keeps its outcome; a plain-def job cannot be interrupted, so
        its thread runs it to the end and its outcome is dropped.
        """
        state = self.state
        if state == QUEUED:
            # held by a blocked submitter or a map's backlog: never submitted, not counted
            self.finish_cancelled(counted=self.sched.unqueue(self))
            return True
        if state == RUNNING:
            self.sched.cancel_running(self)
            return True
        return False

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        if self.state < SUCCEEDED:
            waiter = self.sched.new_waiter()
            if self.waiters is None:
                self.waiters = [waiter]
            else:
                self.waiters.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                fatal = self.sched.fatal
                if fatal is not None and self.state == FAILED and self.value is fatal:
                    # this job's KeyboardInterrupt (or other BaseException) aborted the pool,
                    # which cancels us: the awaiter gets the job's own exception object
                    self.sched.unretrieved.discard(self)
                    raise fatal from None
                raise
            finally:
                if self.waiters is not None and waiter in self.waiters:
                    self.waiters.remove(waiter)
        return self.outcome()

    def outcome(self) -> T:
        """The value, or raise the job's exception (marking it as retrieved)."""
        state = self.state
        if state == SUCCEEDED:
            return self.value  # type: ignore[no-any-return]
        if state == FAILED:
            self.sched.unretrieved.discard(self)
            raise self.value
        if state == CANCELLED:
            raise PoolClosedError(
                f"job {self.name()} of pool {self.sched.name!r} was cancelled or dropped "
                "before it finished",
                pool=self.sched.name,
            )
        raise RuntimeError(f"job {self.name()} has not finished")  # pragma: no cover

    # -- called by the scheduler ---------------------------------------------------------------

    def wake(self) -> None:
        """Tell whoever waits: the tasks awaiting the handle, then the unordered map."""
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for waiter in waiters:
                waiter.set()
        on_done = self.on_done
        if on_done is not None:
            on_done(self)

    def finish_cancelled(self, counted: bool = True) -> None:
        """Drop or cancel the job (counted as ``cancelled`` in the pool's metrics)."""
        self.state = CANCELLED
        self.args = ()  # free the arguments early (the function stays, for repr and logs)
        if counted:
            self.sched.count_cancelled()
        self.wake()


@dataclass(frozen=True)
class PoolStatistics:
    """A point-in-time snapshot of one pool (``WorkerPool.statistics()``).

    ``queued`` jobs wait for a worker, ``running`` jobs hold one, ``waiting_submitters`` are
    ``submit`` calls blocked on a full queue. The totals count this pool object's finished
    jobs: ``submitted == succeeded + failed + cancelled + queued + running`` at any moment.
    """

    name: str
    workers: int
    queue_size: int
    queued: int
    running: int
    waiting_submitters: int
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    closed: bool

    def __post_init__(self) -> None:
        for field in (
            "queued", "running", "waiting_submitters", "submitted", "succeeded", "failed",
            "cancelled",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"PoolStatistics.{field} must be >= 0")
        if self.workers < 1:
            raise ValueError(f"PoolStatistics.workers must be >= 1, got {self.workers}")
        if self.queue_size < 0:
            raise ValueError(f"PoolStatistics.queue_size must be >= 0, got {self.queue_size}")
