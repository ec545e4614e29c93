"""Running one call through a command from async code: admission, timeout, outcome, fallback.

Admission and completion are each one short critical section under the command's lock
(``CircuitCore``). Between them the function runs with no lock held, in the caller's task
under a real cancel scope. Whatever ends a call (result, exception, timeout, cancellation,
``BaseException``, even a ``KeyboardInterrupt`` landing on any line of this code) its slot is
given back exactly once and the lock is never left held: the caller keeps two locals,
``held`` (the lock's token) and ``gen`` (>= 0 while the slot is ours), each changed on the
same line as what it tracks, and one handler around the whole call gives back whatever they
say is still held. (In CPython 3.11 ``try`` costs nothing while nothing is raised.)

Plain callables (threads) and sync callers are in ``_command_sync``.
"""

from __future__ import annotations

import asyncio
import inspect
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

import anyio

from ._backend import Deadline, Wakeup, checkpoint, outer_deadline_first, running_loop
from ._circuit import (
    NEED_WAITER,
    REFUSED,
    WAITING,
    CircuitCore,
    SlotWaiter,
    kind_of,
    publish,
    timer,
)
from ._errors import (
    CircuitOpenError,
    CommandTimeoutError,
    FailedResultError,
    MaxConcurrencyError,
)
from ._outcomes import CANCELLED, FAILURE, IGNORED, SUCCESS, TIMEOUT

__all__ = [
    "FALLBACK",
    "RAISE",
    "REFUSALS",
    "RELEASED",
    "Expired",
    "Fallback",
    "Verdict",
    "admit",
    "admit_now",
    "admit_waiting",
    "dequeue",
    "enqueue",
    "call_fallback",
    "chain",
    "coroutine_caller",
    "failed",
    "fallback_failed",
    "finish",
    "in_cancel_scope",
    "judge",
    "settle",
]

Fallback = Callable[[Exception], Any]

_current_task = asyncio.current_task
_CancelledError = asyncio.CancelledError
REFUSALS = (CircuitOpenError, MaxConcurrencyError)
RELEASED = -10  # a ``gen`` value: the slot was given back
YIELDING = -11  # a ``gen`` value: at the checkpoint before admission
_NO_TICKET: list[int] = []  # (never appended to: only admit() appends, to a fresh list)


class Expired(Exception):
    """Our own deadline passed (a ``CommandTimeoutError`` of a nested command is not ours).

    Never leaves this package: it becomes a ``CommandTimeoutError``.
    """

    def __init__(self, timeout: float, when: float) -> None:
        self.timeout = timeout
        self.when = when


class Verdict(Exception):
    """``failed_if`` judged the result a failure (``error`` None) or raised ``error``.

    Never leaves this package.
    """

    def __init__(self, value: Any, error: Exception | None) -> None:
        self.value = value
        self.error = error


def judge(failed_if: Callable[[Any], bool], value: Any) -> None:
    """Raise a ``Verdict`` if ``failed_if(value)`` is true or raises."""
    try:
        failed = failed_if(value)
    except Exception as exc:
        raise Verdict(value, exc) from None
    if failed:
        raise Verdict(value, None)


def chain(exc: BaseException, error: BaseException) -> None:
    """Make the fallback's exception ``exc`` chain to the ``error`` it was given."""
    link = exc
    for _ in range(64):  # bounded: a context cycle made by user code cannot hang us
        if link is error:
            return
        context = link.__context__
        if context is None or isinstance(context, Expired | Verdict | _CancelledError):
            link.__context__ = error
            return
        link = context


def finish(
    core: CircuitCore, gen: int, kind: int, duration: float | None, release: bool = True
) -> None:
    """Count the outcome, giving the slot back if ``release`` (one critical section), then
    publish the events it caused."""
    lock = core.lock
    held: bool | None = False
    try:
        held = lock.acquire()
        if release:
            core.release()
        core.record(gen, kind, duration)
        events = core.take_events()
        held = lock.give(True)
    finally:
        if held:
            lock.give(True)
    if events:
        publish(core, events)


def coroutine_caller(
    core: CircuitCore, fn: Callable[..., Awaitable[Any]], fallback: Fallback | None
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """An ``async def`` that runs ``fn`` in the caller's task through ``core``.

    This is the hot path: the common case (closed circuit, free slot, success) is written out
    in one frame with the lock's own methods and literal indexes; every other case leaves it
    through a helper. It reads and writes ``core``'s fields inline on purpose (each helper
    call costs ~50 ns, the whole shortcut ~400 ns).
    """
    lock = core.lock
    take, give, acquire = lock.take, lock.give, lock.acquire
    calls = core.calls
    hist = core.duration
    bounds, counts = hist.bounds, hist.counts
    first_bound = bounds[0]
    clock = core.clock
    shared_clock = clock is timer  # production: one reading serves duration and window

    async def call(*args: Any, **kwargs: Any) -> Any:
        held = started = deadline = None; gen = REFUSED; ticket = _NO_TICKET  # noqa: E702
        try:
            try:
                held = take()
            except IndexError:
                held = acquire()  # contended: another thread is in a critical section
            if core.in_flight < core.limit:  # closed, not forced, a slot free, nobody waiting
                core.in_flight += 1; gen = core.gen; held = give(True)  # noqa: E702
            else:  # every call is a checkpoint: yield once, then admit, wait or refuse
                held = give(True); ticket = []; gen = YIELDING  # noqa: E702
                await checkpoint()
                gen = admit_now(core, ticket)  # raises the refusal
                if gen == NEED_WAITER:
                    gen = await admit_waiting(core, ticket)
            timeout = core.timeout
            started = timer()
            if timeout is None:
                result = await fn(*args, **kwargs)
            else:
                loop = running_loop()
                if loop is None:
                    result = await in_cancel_scope(fn, args, kwargs, timeout)
                else:
                    # the inline asyncio deadline (no nested try: its line would be outside
                    # the handler below); the handler tells our cancel from the caller's
                    deadline = Deadline(loop, _current_task(loop), timeout)  # type: ignore[arg-type]
                    result = await fn(*args, **kwargs)
                    deadline.disarm()  # (the function may have swallowed our cancel)
            failed_if = core.failed_if
            if failed_if is not None:
                judge(failed_if, result)
            ended = timer()
            duration = ended - started
            if not shared_clock:
                ended = clock()  # a test clock: the window runs on it
            held = acquire()  # (not take(): a nested try's own line is outside the handler)
            if core.waiters:
                core.release(); g = gen; gen = RELEASED  # noqa: E702
            else:
                core.in_flight -= 1; g = gen; gen = RELEASED  # noqa: E702
            calls[0] += 1  # SUCCESS
            if duration <= first_bound:
                counts[0] += 1
            else:
                counts[bisect_left(bounds, duration)] += 1
            hist.sum += duration
            window = core.window
            if ended < window.end and g == core.fast_gen and not window.countdown:
                # closed, current, volume reached, same bucket as the last evaluated outcome:
                # a success only lowers the error rate, so health cannot change
                window.bucket[0] += 1; window.totals[0] += 1; held = give(True)  # noqa: E702
                return result
            core.record_window(g, SUCCESS, ended)
            events = core.take_events()
            held = give(True)
            if events:
                publish(core, events)
            return result
        except BaseException as exc:
            if held:
                give(True)
            if gen < 0 and ticket:
                gen = ticket[0]  # interrupted inside admit() after it took a slot
            elif gen == YIELDING and not isinstance(exc, REFUSALS):
                lock.run(core.count, CANCELLED)  # cancelled at its checkpoint, not admitted
            if deadline is not None and deadline.disarm() and isinstance(exc, _CancelledError):
                error: BaseException = Expired(deadline.delay, deadline.when)  # ours
            elif gen >= 0 or (fallback is not None and isinstance(exc, REFUSALS)):
                error = exc
            else:
                raise
        # Outside the handler, so that nothing we raise from here chains to a private error.
        try:
            if gen >= 0:
                return await failed(core, gen, error, started, fallback)
            assert fallback is not None and isinstance(error, Exception)
            return await call_fallback(core, fallback, error)
        finally:
            del error  # no exception -> traceback -> frame -> exception cycle

    return call


async def admit(core: CircuitCore, ticket: list[int]) -> int:
    """Admission when the shortcut does not apply (circuit not closed, no slot free, or
    callers already waiting): yield once (every call is a checkpoint, refused ones included,
    so a loop of refusals lets deadlines fire and other tasks run), then return the
    generation, waiting for a slot if ``max_wait`` allows, or raise the refusal."""
    try:
        await checkpoint()
    except BaseException:
        core.lock.run(core.count, CANCELLED)  # cancelled before it was admitted
        raise
    gen = admit_now(core, ticket)
    if gen == NEED_WAITER:
        gen = await admit_waiting(core, ticket)
    return gen


def admit_now(core: CircuitCore, ticket: list[int]) -> int:
    """The generation, NEED_WAITER (a slot may free up within ``max_wait``), or raise the
    refusal. (``lock.run`` written inline: this is the refused call's path.)"""
    lock = core.lock
    held: bool | None = False
    try:
        held = lock.acquire()
        gen = core.admit(ticket, None)
        refused = core.refused
        core.refused = None
        events = core.events and core.take_events()
        held = lock.give(True)
    finally:
        if held:
            lock.give(True)
    if events:
        publish(core, events)
    if gen >= 0 or gen == NEED_WAITER:
        return gen
    assert refused is not None
    try:
        raise refused
    finally:
        del refused


async def admit_waiting(core: CircuitCore, ticket: list[int]) -> int:
    """Queue for a slot (first come, first served) for up to ``max_wait``; the generation,
    or raise the rejection."""
    waiter = Wakeup(-1)
    gen = enqueue(core, ticket, waiter)
    if gen >= 0:
        return gen
    try:
        with anyio.move_on_after(core.max_wait):
            await waiter.wait()
    except BaseException:
        core.lock.run(core.leave_queue, waiter)
        raise
    return dequeue(core, waiter)


def enqueue(core: CircuitCore, ticket: list[int], waiter: SlotWaiter) -> int:
    """Admit with ``waiter`` queued if no slot is free: the generation or WAITING, or raise
    the refusal (the circuit may have opened meanwhile)."""
    gen, refused, events = core.lock.run(core.try_admit, ticket, waiter)
    if events:
        publish(core, events)
    if gen >= 0 or gen == WAITING:
        return gen
    _raise(refused)


def dequeue(core: CircuitCore, waiter: SlotWaiter) -> int:
    """The waiter woke up or ran out of time: its generation, or raise the rejection."""
    gen, refused, events = core.lock.run(core.end_wait, waiter)
    if events:
        publish(core, events)
    if gen >= 0:
        return gen
    _raise(refused)


def _raise(refused: BaseException | None) -> NoReturn:
    assert refused is not None
    try:
        raise refused
    finally:
        del refused


async def in_cancel_scope(
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
) -> Any:
    with anyio.move_on_after(timeout) as scope:
        return await fn(*args, **kwargs)
    raise Expired(timeout, scope.deadline)


#: What ``settle`` tells its caller to do.
RAISE, FALLBACK = 0, 1


def settle(
    core: CircuitCore, gen: int, exc: BaseException, duration: float | None, release: bool = True
) -> tuple[int, Any]:
    """An admitted call ended with ``exc``: count it (giving the slot back if ``release``)
    and say what the caller gets: ``(RAISE, error)``, or ``(FALLBACK, error)``: the error for
    the fallback (without one, raise it; a ``FailedResultError``'s result is returned)."""
    if isinstance(exc, Expired):
        finish(core, gen, TIMEOUT, duration, release)
        return FALLBACK, CommandTimeoutError(core.name, timeout=exc.timeout)
    if isinstance(exc, Verdict):
        finish(core, gen, FAILURE, duration, release)
        if exc.error is not None:
            return RAISE, exc.error
        return FALLBACK, FailedResultError(core.name, result=exc.value)
    try:
        kind = kind_of(core, exc)
    except BaseException:
        finish(core, gen, FAILURE, duration, release)  # the ignore predicate raised
        raise
    finish(core, gen, kind, None if kind == CANCELLED else duration, release)
    if kind >= IGNORED:
        return RAISE, exc
    return FALLBACK, exc


async def failed(
    core: CircuitCore,
    gen: int,
    exc: BaseException,
    started: float | None,
    fallback: Fallback | None,
    release: bool = True,
) -> Any:
    """An admitted call ended with ``exc``: count it, give the slot back, run the fallback."""
    duration = None if started is None else timer() - started
    try:
        if isinstance(exc, Expired):
            try:
                await outer_deadline_first(exc.when)  # the caller's deadline wins a tie
            except BaseException:
                finish(core, gen, CANCELLED, None, release)
                raise
        action, error = settle(core, gen, exc, duration, release)
        if action == FALLBACK and fallback is not None:
            return await call_fallback(core, fallback, error)
        if action == FALLBACK and isinstance(error, FailedResultError):
            return error.result  # a failed result without a fallback is returned as is
        if error is exc:
            raise exc
        raise error from None
    finally:
        del exc


async def call_fallback(core: CircuitCore, fallback: Fallback, error: Exception) -> Any:
    try:
        value = fallback(error)
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:
        fallback_failed(core, exc, error)
        raise
    finally:
        del error
    core.lock.run(core.record_fallback, True)
    return value


def fallback_failed(core: CircuitCore, exc: Exception, error: Exception) -> None:
    """The fallback given ``error`` raised ``exc``: chain it to ``error`` and count it."""
    chain(exc, error)
    core.lock.run(core.record_fallback, False)
