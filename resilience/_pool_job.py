"""The job handle of a :class:`~resilience.WorkerPool` and the pool's statistics snapshot.

A handle is a small slotted object that travels through the pool's queue itself: it holds
the function, its arguments, and later its outcome. Nothing is allocated for waking a waiter
unless somebody actually waits for a job that is not finished yet.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import PoolClosedError

if TYPE_CHECKING:
    from ._backend import Waiter
    from ._pool import WorkerPool

__all__ = ["JobHandle", "PoolStatistics"]

T = TypeVar("T")

# Job states, in the order a job moves through them.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = range(5)
_STATE_NAMES = ("queued", "running", "succeeded", "failed", "cancelled")



class JobHandle(Generic[T]):
    """One job submitted to a pool. ``await handle`` gives its value or re-raises its error.

    Awaiting a job that the pool dropped or cancelled (or that :meth:`cancel` stopped)
    raises :class:`~resilience.PoolClosedError`. Awaiting only observes: cancelling the task
    that awaits does not cancel the job (use :meth:`cancel` for that).
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_callback",
        "_fn",
        "_is_async",
        "_owner",
        "_pool",
        "_result",
        "_state",
        "_waiters",
        "enqueued",
    )

    def __init__(
        self,
        pool: WorkerPool,
        fn: Callable[..., Any],
        args: tuple[Any, ...] | list[Any],
        is_async: bool,
        owner: object = None,
        callback: Callable[[JobHandle[Any]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._args: Any = args  # a tuple, or the one-item list a map job reuses
        self._is_async = is_async
        self._owner = owner  # the map that made it, if any
        self._callback = callback  # told when it finishes (an unordered map)
        self._state = QUEUED
        self._result: Any = None  # the value, or the exception once FAILED
        self._waiters: list[Waiter] | None = None  # one per task awaiting the handle
        self.enqueued = perf_counter()  # when it entered the queue (queue-wait metric)

    def __repr__(self) -> str:
        name = getattr(self._fn, "__qualname__", None) or repr(self._fn)
        return f"<JobHandle {name} of pool {self._pool.name!r}: {_STATE_NAMES[self._state]}>"

    def done(self) -> bool:
        """True once the job has finished: succeeded, failed, dropped or cancelled."""
        return self._state >= SUCCEEDED

    def cancelled(self) -> bool:
        """True if the job was cancelled or dropped before finishing."""
        return self._state == CANCELLED

    def cancel(self) -> bool:
        """Cancel the job: a queued job is dropped, a running one is cancelled.

        Returns False if the job had already finished. A running job that finishes before
        it reaches a checkpoint keeps its outcome.
        """
        state = self._state
        if state == QUEUED:
            # held by a blocked submitter or a map's backlog: never submitted, not counted
            self._finish_cancelled(counted=self._pool._unqueue(self))
            return True
        if state == RUNNING:
            for worker in self._pool._workers:  # rare: no back-reference kept per job
                if worker.job is self:
                    worker.cancel_job(self)
                    break
            return True
        return False

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        if self._state < SUCCEEDED:
            waiter = self._pool._new_waiter()
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)
            try:
                await waiter.wait()
            finally:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._outcome()

    def _outcome(self) -> T:
        """The value, or raise the job's exception (marking it as retrieved)."""
        state = self._state
        if state == SUCCEEDED:
            return self._result  # type: ignore[no-any-return]
        if state == FAILED:
            self._pool._unretrieved.discard(self)
            raise self._result
        if state == CANCELLED:
            raise PoolClosedError(
                f"job {self._name()} of pool {self._pool.name!r} was cancelled or dropped "
                "before it finished",
                pool=self._pool.name,
            )
        raise RuntimeError(f"job {self._name()} has not finished")  # pragma: no cover

    def _name(self) -> str:
        return getattr(self._fn, "__qualname__", None) or repr(self._fn)

    # -- called by the pool --------------------------------------------------------------------

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for waiter in waiters:
                waiter.set()
        callback = self._callback
        if callback is not None:
            callback(self)

    def _finish_cancelled(self, counted: bool = True) -> None:
        """Drop or cancel the job (counted as ``cancelled`` in the pool's metrics)."""
        self._state = CANCELLED
        self._args = ()  # free the arguments early (the function stays, for repr and logs)
        if counted:
            self._pool._count_cancelled()
        self._wake()


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
