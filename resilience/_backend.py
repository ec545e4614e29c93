"""The one seam between resilience and the event loops it runs on.

Every probe of "which backend is running" and every backend-specific primitive lives here, so
there is one place to keep right (and no import of ``sniffio``, which anyio >= 4.12 no longer
brings, nor of ``trio`` unless trio is the running backend):

* :func:`running_loop` -- the running asyncio loop, or ``None`` (trio, or no loop): one C call,
  cheap enough for the command hot path.
* :class:`Deadline` -- the inline asyncio deadline of a command: ``asyncio.timeout``'s
  cancel/uncancel protocol as an arm/disarm pair with no context manager or frame.
* :func:`outer_deadline_first` -- after our own deadline fired: wait for the caller's
  cancellation when the caller's deadline expired at the same instant (so it wins on every
  loop, uvloop's millisecond timers included).
* :func:`wait_future` -- wait for a ``concurrent.futures.Future`` (a worker thread) and return
  its result *read in the caller's frame*, so a ``BaseException`` from the thread (even
  ``GeneratorExit``) reaches the caller as the same object on both backends.
* :func:`waiter_factory` -- one-shot park/wake primitives for the pool's hot path.
* :func:`loop_caller` -- run a callback soon in the event loop's thread, from any thread (or a
  finalizer): how the pool's worker threads and collected iterators reach the loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import anyio

__all__ = [
    "Deadline",
    "checkpoint",
    "Waiter",
    "Wakeup",
    "loop_caller",
    "outer_deadline_first",
    "running_loop",
    "wait_future",
    "waiter_factory",
]

T = TypeVar("T")

#: The running asyncio event loop, or ``None`` when none runs in this thread (e.g. trio).
#: ``asyncio._get_running_loop`` is part of ``asyncio.events.__all__`` and is what
#: ``get_running_loop`` itself calls; it returns ``None`` instead of raising.
running_loop: Callable[[], asyncio.AbstractEventLoop | None] = asyncio._get_running_loop


class Deadline:
    """Cancel an asyncio task at a deadline, and tell afterwards whether we did.

    ``arm`` schedules the cancel; ``disarm`` cancels the timer and reports whether the
    ``CancelledError`` now propagating (if any) is *ours*: only when our timer fired and nobody
    else cancelled the task too (``uncancel()`` brings the count back to where it was).
    """

    __slots__ = ("_cancelling", "_handle", "delay", "fired", "task", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], delay: float):
        self.task = task
        self.fired = False
        self.delay = delay
        self._cancelling = task.cancelling()
        self.when = loop.time() + delay
        self._handle: asyncio.TimerHandle | None = loop.call_at(self.when, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def disarm(self) -> bool:
        """Stop the timer; ``True`` if our cancel is the only one pending (a timeout).

        Idempotent: only the first call counts our cancel back."""
        handle = self._handle
        if handle is None:
            return False
        self._handle = None
        handle.cancel()
        if not self.fired:
            return False
        return self.task.uncancel() <= self._cancelling


_sleep = asyncio.sleep


async def checkpoint() -> None:
    """Yield to the event loop once, letting a pending cancellation in (like anyio's own
    ``checkpoint``, without its dispatch: about 1 µs less on the refused-call path)."""
    if running_loop() is not None:
        await _sleep(0)
    else:
        await sys.modules["trio"].lowlevel.checkpoint()


async def outer_deadline_first(deadline: float) -> None:
    """Called when our own deadline (``deadline`` on anyio's clock) has passed.

    If the caller's effective deadline is not later than ours, the caller's cancellation is
    due too: wait for it (it raises the caller's cancellation here), so the caller's deadline
    wins over the command's timeout whatever order the loop ran the two timers in.
    """
    outer = anyio.current_effective_deadline()
    if outer <= deadline:
        # The caller's scope has expired too; its cancellation arrives within a timer tick
        # (uvloop's timers are millisecond-grained and anyio re-arms an early one), so wait
        # for it, bounded: a scope that somehow never delivers costs at most 50 ms.
        await anyio.sleep(max(outer - anyio.current_time(), 0.0) + 0.05)


async def wait_future(fut: Future[T]) -> T:
    """Wait until ``fut`` is done, then return its result (or raise its exception) here.

    Cancelling the wait does not cancel the thread; the caller decides what that means.
    """
    loop = running_loop()
    if loop is not None:
        done = loop.create_future()

        def wake_asyncio(_: object) -> None:
            try:
                loop.call_soon_threadsafe(_set_done, done)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting any more
                pass

        fut.add_done_callback(wake_asyncio)
        await done
    else:
        import trio  # only reached under trio, where it is imported already

        token = trio.lowlevel.current_trio_token()
        event = trio.Event()

        def wake_trio(_: object) -> None:
            try:
                token.run_sync_soon(event.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake_trio)
        await event.wait()
    return fut.result()


def _set_done(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class Wakeup:
    """Park the current task in :meth:`wait` until :meth:`wake` is called from any thread.

    ``state`` and ``gen`` are the command's bookkeeping (see ``_circuit.SlotWaiter``).
    """

    __slots__ = ("_asyncio", "_trio", "gen", "state")

    def __init__(self, gen: int) -> None:
        self.state = 0
        self.gen = gen
        loop = running_loop()
        self._asyncio: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._trio: Any = None
        if loop is not None:
            self._asyncio = (loop, loop.create_future())
        else:
            import trio

            self._trio = (trio.lowlevel.current_trio_token(), trio.Event())

    def wake(self) -> None:
        try:
            if self._asyncio is not None:
                loop, fut = self._asyncio
                loop.call_soon_threadsafe(_set_done, fut)
            else:
                token, event = self._trio
                token.run_sync_soon(event.set)
        except Exception:  # the loop or trio run ended: nobody is waiting any more
            pass

    async def wait(self) -> None:
        if self._asyncio is not None:
            await self._asyncio[1]
        else:
            await self._trio[1].wait()


class Waiter(Protocol):
    """Park one task until :meth:`set` is called (once)."""

    def set(self) -> None: ...

    async def wait(self) -> None: ...


class _AsyncioWaiter:
    # ``anyio.Event`` costs ~1.5 us to create and two layers of dispatch to wait on; the pool
    # parks and wakes tasks on every queue-empty/queue-full transition, so it uses the
    # native primitive. A cancelled wait raises the backend's cancellation, like anyio.Event.
    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    async def wait(self) -> None:
        await self._fut


def _trio_factory() -> Callable[[], Waiter]:
    from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

    class _TrioWaiter:
        __slots__ = ("_is_set", "_task")

        def __init__(self) -> None:
            self._task: Any = None
            self._is_set = False

        def set(self) -> None:
            if not self._is_set:
                self._is_set = True
                task = self._task
                if task is not None:
                    self._task = None
                    reschedule(task)

        def _abort(self, _: Any) -> Abort:
            # trio calls this synchronously when the wait is cancelled: forget the task at
            # once, so that a set() before it resumes does not reschedule it a second time
            self._task = None
            return Abort.SUCCEEDED

        async def wait(self) -> None:
            if self._is_set:
                return
            self._task = current_task()
            await wait_task_rescheduled(self._abort)

    return _TrioWaiter


def waiter_factory() -> Callable[[], Waiter]:
    """The waiter class for the running backend (``anyio.Event`` for unknown ones)."""
    if running_loop() is not None:
        return _AsyncioWaiter
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return _trio_factory()
    return anyio.Event  # pragma: no cover - another anyio backend


def loop_caller() -> Callable[[Callable[[], object]], None]:
    """A thread-safe ``call(fn)`` that runs ``fn()`` soon in the running event loop's thread.

    Safe from any thread and from a finalizer; once the loop has finished, ``call`` does
    nothing (nobody is left to run it for).
    """
    loop = running_loop()
    if loop is not None:
        call_soon = loop.call_soon_threadsafe

        def call_asyncio(fn: Callable[[], object]) -> None:
            try:
                call_soon(fn)
            except RuntimeError:  # the loop is closed
                pass

        return call_asyncio
    import trio  # only reached under trio, where it is imported already

    run_sync_soon = trio.lowlevel.current_trio_token().run_sync_soon
    finished = trio.RunFinishedError

    def call_trio(fn: Callable[[], object]) -> None:
        try:
            run_sync_soon(fn)
        except finished:
            pass

    return call_trio
