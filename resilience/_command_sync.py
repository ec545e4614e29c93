"""Running plain callables through a command: in the caller's thread, or in worker threads.

* Sync code, ``timeout=None``: the function runs in the caller's thread (thread-locals and
  per-thread connections work; no thread hop).
* Sync code with a timeout, or a plain callable given to ``run`` from async code: the
  function runs in a worker thread so the caller's timeout holds. The slot is shared by the
  caller and the thread (:class:`SharedSlot`) and freed when both let go, so a thread that
  outlives its caller's timeout keeps its slot until it returns.

Each caller keeps a ``phase`` local, changed on the same line as what it tracks, so that one
handler around the whole call knows what to give back, whatever interrupts it.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from functools import partial
from typing import Any

import anyio

from ._backend import wait_future
from ._circuit import NEED_WAITER, REFUSED, CircuitCore, publish
from ._circuit import timer as _timer
from ._command import (
    FALLBACK,
    REFUSALS,
    Expired,
    Fallback,
    Verdict,
    admit,
    admit_now,
    call_fallback,
    dequeue,
    enqueue,
    failed,
    fallback_failed,
    finish,
    judge,
    settle,
)
from ._errors import FailedResultError
from ._outcomes import SUCCESS
from ._threads import ThreadPool

__all__ = ["call_async", "call_sync"]

# phases of a threaded call
_DONE, _NOT_ADMITTED, _ADMITTED, _SHARED, _DROPPED = range(-1, 4)


class SharedSlot:
    """A slot held by both the caller and a worker thread; freed when both let go.

    Each share is given back on one line that also records it (``mine`` for the caller's),
    so an interrupt can neither give a share back twice nor lose one.
    """

    __slots__ = ("_core", "handed", "holders", "mine")

    def __init__(self, core: CircuitCore) -> None:
        self._core = core
        self.holders = 2
        self.mine = True  # the caller still holds its share
        self.handed = False  # the thread's share is handed to its future's done-callback

    def drop(self, _: object = None) -> None:
        """The thread's share (a done-callback of its future)."""
        self._core.lock.run(self._drop)

    def drop_mine(self) -> None:
        """The caller's share."""
        if self.mine:
            self._core.lock.run(self._drop_mine)

    def _drop(self) -> None:
        core = self._core
        if self.holders == 1 and core.waiters:
            core.release(); self.holders -= 1  # noqa: E702
        else:  # no call on this line: an interrupt lands before or after all of it
            core.in_flight -= self.holders == 1; self.holders -= 1  # noqa: E702

    def _drop_mine(self) -> None:
        core = self._core
        if self.holders == 1 and core.waiters:
            core.release(); self.holders -= 1; self.mine = False  # noqa: E702
        else:
            core.in_flight -= self.holders == 1; self.holders -= 1; self.mine = False  # noqa: E702


def _threads(core: CircuitCore) -> ThreadPool:
    pool = core.threads
    if pool is None:
        with core.lock:
            if core.threads is None:
                core.threads = ThreadPool(core.name)
            pool = core.threads
    return pool


def _submit(
    core: CircuitCore, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Future[Any]:
    """Start ``fn`` in one of the command's worker threads."""
    if kwargs:
        fn, args = partial(fn, *args, **kwargs), ()
    return _threads(core).submit(fn, args)


def _unshare(slot: SharedSlot, fut: Future[Any] | None) -> None:
    """An interrupted caller lets go of a slot it was sharing (or about to share)."""
    if fut is None:
        slot.drop()  # no thread was started: both shares are ours
    elif not slot.handed:
        fut.add_done_callback(slot.drop)  # started, but its share was not handed over yet
    slot.drop_mine()


def _close_late(fut: Future[Any]) -> None:
    """A thread that returned after its caller's timeout: close a coroutine it returned
    (nobody will await it), so it neither warns "never awaited" nor runs half-way."""
    if not fut.cancelled() and fut.exception() is None:
        value = fut.result()
        if inspect.iscoroutine(value):
            value.close()


def _not_awaitable(core: CircuitCore, value: Any) -> None:
    """A sync-run function returned an awaitable: close it and refuse the call."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # no "never awaited" warning
        raise Verdict(
            value,
            TypeError(
                f"command {core.name!r}: a plain function returned the awaitable {value!r}; "
                "decorate an 'async def' instead, or use 'await resilience.run(...)' from "
                "async code"
            ),
        )


# -- from async code ------------------------------------------------------------------------------


async def call_async(
    core: CircuitCore,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fallback: Fallback | None,
) -> Any:
    """Run a non-coroutine callable in a worker thread, awaiting it from async code."""
    phase = _NOT_ADMITTED
    slot = fut = started = None
    gen = REFUSED
    ticket: list[int] = []
    try:
        gen = await admit(core, ticket); phase = _ADMITTED  # noqa: E702
        slot = SharedSlot(core); phase = _SHARED  # noqa: E702
        fut = _submit(core, fn, args, kwargs)
        fut.add_done_callback(slot.drop); slot.handed = True  # noqa: E702
        timeout = core.timeout
        started = _timer()
        if timeout is None:
            result = await wait_future(fut)
            if inspect.isawaitable(result):
                result = await result
        else:
            with anyio.move_on_after(timeout) as scope:
                result = await wait_future(fut)
                if inspect.isawaitable(result):
                    result = await result
            if scope.cancelled_caught:
                fut.add_done_callback(_close_late)
                raise Expired(timeout, scope.deadline)
        slot.drop_mine(); phase = _DROPPED  # noqa: E702
        if core.failed_if is not None:
            judge(core.failed_if, result)
        finish(core, gen, SUCCESS, _timer() - started, release=False)
        return result
    except BaseException as exc:
        if phase == _SHARED and slot is not None:
            _unshare(slot, fut)
        if phase == _NOT_ADMITTED and ticket:
            phase, gen = _ADMITTED, ticket[0]  # interrupted in admit() after it took a slot
        if phase == _NOT_ADMITTED and (fallback is None or not isinstance(exc, REFUSALS)):
            raise
        error = exc
    try:
        if phase == _NOT_ADMITTED:
            assert fallback is not None and isinstance(error, Exception)
            return await call_fallback(core, fallback, error)
        return await failed(core, gen, error, started, fallback, release=phase == _ADMITTED)
    finally:
        del error


# -- from sync code --------------------------------------------------------------------------------


class _ThreadWaiter:
    """A sync caller waiting for a slot: a lock the granter releases."""

    __slots__ = ("_lock", "gen", "state")

    def __init__(self) -> None:
        self.state = 0
        self.gen = -1
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self, timeout: float) -> None:
        self._lock.acquire(timeout=timeout)


def _admit_sync(core: CircuitCore, ticket: list[int]) -> int:
    """Admission from sync code: the generation (after waiting up to ``max_wait`` for a
    slot), or raise the refusal."""
    gen = admit_now(core, ticket)
    if gen != NEED_WAITER:
        return gen
    waiter = _ThreadWaiter()
    gen = enqueue(core, ticket, waiter)
    if gen >= 0:
        return gen
    try:
        waiter.wait(core.max_wait)
    except BaseException:
        core.lock.run(core.leave_queue, waiter)
        raise
    return dequeue(core, waiter)


def call_sync(
    core: CircuitCore,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fallback: Fallback | None,
) -> Any:
    """Run the plain function ``fn`` through ``core`` from sync code."""
    lock = core.lock
    phase = _NOT_ADMITTED
    held = slot = fut = started = None
    gen = REFUSED
    ticket: list[int] = []
    timeout = core.timeout
    try:
        try:
            held = lock.take()
        except IndexError:
            held = lock.acquire()
        if core.in_flight < core.limit:  # closed, not forced, a slot free, nobody waiting
            # one line: an interrupt lands before or after all of it (see the module doc)
            core.in_flight += 1; gen = core.gen; held = lock.give(True); phase = _ADMITTED  # noqa: E702
        else:
            held = lock.give(True)
            gen = _admit_sync(core, ticket); phase = _ADMITTED  # noqa: E702
        started = _timer()
        if timeout is None:
            result = fn(*args, **kwargs)  # in this thread
        else:
            slot = SharedSlot(core); phase = _SHARED  # noqa: E702
            fut = _submit(core, fn, args, kwargs)
            fut.add_done_callback(slot.drop); slot.handed = True  # noqa: E702
            if not wait((fut,), timeout).done:  # (no try statement: see the module doc)
                fut.add_done_callback(_close_late)
                raise Expired(timeout, 0.0)
            slot.drop_mine(); phase = _DROPPED  # noqa: E702
            result = fut.result()
        _not_awaitable(core, result)
        if core.failed_if is not None:
            judge(core.failed_if, result)
        duration = _timer() - started
        if phase == _DROPPED:
            finish(core, gen, SUCCESS, duration, release=False)
            return result
        held = lock.acquire()  # (not take(): a nested try's own line is outside the handler)
        core.release(); phase = _DONE  # noqa: E702
        core.record(gen, SUCCESS, duration)
        events = core.take_events()
        held = lock.give(True)
        if events:
            publish(core, events)
        return result
    except BaseException as exc:
        if held:
            lock.give(True)
        if phase == _SHARED and slot is not None:
            _unshare(slot, fut)
        if phase == _NOT_ADMITTED and ticket:
            phase, gen = _ADMITTED, ticket[0]  # interrupted in admit() after it took a slot
        if phase == _DONE or (
            phase == _NOT_ADMITTED and (fallback is None or not isinstance(exc, REFUSALS))
        ):
            raise
        error = exc
    try:
        if phase == _NOT_ADMITTED:
            assert fallback is not None and isinstance(error, Exception)
            return _fallback_sync(core, fallback, error)
        elapsed = None if started is None else _timer() - started
        action, err = settle(core, gen, error, elapsed, release=phase == _ADMITTED)
        if action == FALLBACK and fallback is not None:
            return _fallback_sync(core, fallback, err)
        if action == FALLBACK and isinstance(err, FailedResultError):
            return err.result
        if err is error:
            raise error
        raise err from None
    finally:
        del error


def _fallback_sync(core: CircuitCore, fallback: Fallback, error: Exception) -> Any:
    try:
        value = fallback(error)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError(
                f"command {core.name!r}: the fallback of a sync call returned an awaitable; "
                "use a plain function as fallback for plain def commands"
            )
    except Exception as exc:
        fallback_failed(core, exc, error)
        raise
    finally:
        del error
    core.lock.run(core.record_fallback, True)
    return value

