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
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from functools import partial
from typing import Any

import anyio

from ._admission import REFUSALS, admit, admit_now, dequeue, enqueue
from ._backend import wait_future
from ._circuit import NEED_WAITER, REFUSED, CircuitCore, publish
from ._circuit import timer as _timer
from ._command import retry_async
from ._errors import FailedResultError
from ._outcomes import SUCCESS
from ._settle import (
    FALLBACK,
    RAISE,
    REFUSAL,
    Expired,
    Failed,
    Fallback,
    Owed,
    Verdict,
    call_fallback,
    conclude,
    fallback_failed,
    finish,
    give_back,
    judge,
    next_delay,
    retried,
    settle,
)
from ._threads import ThreadPool

__all__ = ["call_async", "call_sync"]

_INF = float("inf")

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
    """An interrupted caller lets go of a slot it was sharing (or about to share).

    Idempotent (an interrupt may land in here, and the caller's outer handler call it again):
    ``handed`` is set on the line that hands the thread's share over, ``mine`` likewise."""
    if not slot.handed:
        if fut is None:  # no thread was started: both shares are ours
            slot.drop(); slot.handed = True  # noqa: E702
        else:  # started, but its share was not handed over yet
            fut.add_done_callback(slot.drop); slot.handed = True  # noqa: E702
    slot.drop_mine()


def _let_go(
    core: CircuitCore,
    phase: int,
    gen: int,
    ticket: list[int],
    slot: SharedSlot | None,
    fut: Future[Any] | None,
    owed: Owed,
) -> None:
    """An interrupt landed outside the inner handler: give back what the call still holds."""
    if phase == _SHARED and slot is not None:
        _unshare(slot, fut)
    elif phase == _ADMITTED:
        give_back(core, gen, ticket, owed)
    elif phase == _NOT_ADMITTED and ticket:
        give_back(core, ticket[0], ticket, owed)  # interrupted in admission after it took one


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
    report: bool = False,
) -> Any:
    """Run a non-coroutine callable in a worker thread, awaiting it from async code.

    ``report``: an attempt of a retry loop (see ``coroutine_caller``)."""
    phase = _NOT_ADMITTED
    slot = fut = started = owed = None
    gen = REFUSED
    ticket: list[int] = []
    try:  # (the outer handler: for an interrupt landing in the inner one, or after it)
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
            finish(core, gen, SUCCESS, _timer() - started, None)
            return result
        except BaseException as exc:
            if phase == _SHARED and slot is not None:
                _unshare(slot, fut)
            if phase == _NOT_ADMITTED and ticket:
                phase, gen = _ADMITTED, ticket[0]  # interrupted in admit() after it took a slot
            if phase == _NOT_ADMITTED and (fallback is None or not isinstance(exc, REFUSALS)):
                raise
            error = exc
        owed = [gen] if phase == _ADMITTED else None  # the slot, until finish() gives it back
        try:
            if phase == _NOT_ADMITTED:
                assert fallback is not None and isinstance(error, Exception)
                return await call_fallback(core, fallback, error)
            action, error = await conclude(core, gen, error, started, owed)
            if report:
                return Failed(action, error)
            attempt = partial(_attempt_async, core, fn)
            return await retry_async(core, attempt, args, kwargs, action, error, fallback)
        finally:
            del error
    except BaseException:
        _let_go(core, phase, gen, ticket, slot, fut, owed)
        raise


def _attempt_async(core: CircuitCore, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return call_async(core, fn, args, kwargs, None, True)


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
    report: bool = False,
) -> Any:
    """Run the plain function ``fn`` through ``core`` from sync code.

    ``report``: an attempt of a retry loop (returns a ``Failed``, raises refusals)."""
    lock = core.lock
    phase = _NOT_ADMITTED
    held = slot = fut = started = owed = None
    gen = REFUSED
    ticket: list[int] = []
    timeout = core.timeout
    try:  # (the outer handler: for an interrupt landing in the inner one, or after it)
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
                result = fn(*args, **kwargs) if kwargs else fn(*args)  # in this thread
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
                finish(core, gen, SUCCESS, duration, None)
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
                held = lock.give(True)
            if phase == _SHARED and slot is not None:
                _unshare(slot, fut)
            if phase == _NOT_ADMITTED and ticket:
                phase, gen = _ADMITTED, ticket[0]  # interrupted in admit() after it took a slot
            if phase == _DONE or (
                phase == _NOT_ADMITTED and (fallback is None or not isinstance(exc, REFUSALS))
            ):
                raise
            error = exc
        owed = [gen] if phase == _ADMITTED else None  # the slot, until finish() gives it back
        # (one-line try: a ``try:`` line of its own is outside the outer handler)
        try: return _after_failure(core, fn, args, kwargs, phase, gen, error, started, fallback, owed, report)  # noqa: E501, E701
        finally: del error  # noqa: E701
    except BaseException:
        if held:
            held = lock.give(True)
        _let_go(core, phase, gen, ticket, slot, fut, owed)
        raise


def _after_failure(
    core: CircuitCore,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    phase: int,
    gen: int,
    error: BaseException,
    started: float | None,
    fallback: Fallback | None,
    owed: Owed,
    report: bool,
) -> Any:
    """``call_sync`` did not succeed: count it, then fall back, report or retry."""
    if phase == _NOT_ADMITTED:
        assert fallback is not None and isinstance(error, Exception)
        return _fallback_sync(core, fallback, error)
    elapsed = None if started is None else _timer() - started
    action, outcome = settle(core, gen, error, elapsed, owed)
    del error
    if report:
        return Failed(action, outcome)
    if action == FALLBACK and core.retry is not None:
        return _retry_sync(core, fn, args, kwargs, action, outcome, fallback)
    return _deliver_sync(core, action, outcome, fallback)


def _deliver_sync(core: CircuitCore, action: int, error: Any, fallback: Fallback | None) -> Any:
    """``deliver`` for sync callers."""
    try:
        if action != RAISE and fallback is not None:
            return _fallback_sync(core, fallback, error)
        if action == FALLBACK and isinstance(error, FailedResultError):
            return error.result
        raise error
    finally:
        del error


def _retry_sync(
    core: CircuitCore,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    action: int,
    error: Any,
    fallback: Fallback | None,
) -> Any:
    """``retry_async`` for sync callers: the sleeps are ``time.sleep`` in this thread (sync
    code has no deadline to respect)."""
    policy = core.retry
    number = 1
    try:
        while action == FALLBACK and policy is not None:
            delay = next_delay(core, policy, number, error, _INF)
            if delay < 0:
                break
            if delay:
                time.sleep(delay)  # (``sleep(0)`` would cost a system call for nothing)
            retried(core)
            number += 1
            try:
                outcome = call_sync(core, fn, args, kwargs, None, True)
            except REFUSALS as exc:  # the command's own refusal: never retried
                action, error = REFUSAL, exc
                break
            if type(outcome) is not Failed:
                return outcome
            action, error = outcome.action, outcome.error
        return _deliver_sync(core, action, error, fallback)
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

