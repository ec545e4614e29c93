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
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from ._admission import REFUSALS, admit_or_refuse, admit_waiting
from ._backend import Deadline, checkpoint, running_loop
from ._circuit import NEED_WAITER, REFUSED, CircuitCore, publish, timer
from ._errors import CommandError
from ._lock import wait_token
from ._metrics_records import DURATION_AT, DURATION_BUCKETS, DURATION_SUM, FIRST_BOUND
from ._outcomes import CANCELLED, SUCCESS
from ._settle import (
    FALLBACK,
    REFUSAL,
    RELEASED,
    Expired,
    Failed,
    Fallback,
    call_fallback,
    conclude,
    deliver,
    failed,
    give_back,
    judge,
    next_delay,
    retried,
)

__all__ = ["coroutine_caller", "in_cancel_scope", "retry_async"]

_current_task = asyncio.current_task
_CancelledError = asyncio.CancelledError
YIELDING = -11  # a ``gen`` value: at the checkpoint before admission
_NO_TICKET: list[int] = []  # (never appended to: only admit() appends, to a fresh list)
_INF = float("inf")


def coroutine_caller(
    core: CircuitCore,
    fn: Callable[..., Awaitable[Any]],
    fallback: Fallback | None,
    report: bool = False,
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """An ``async def`` that runs ``fn`` in the caller's task through ``core``.

    With a retry policy, a failed first attempt hands over to ``retry_async``, which runs
    the next attempts through a ``report`` caller: one that returns a :class:`Failed`
    instead of delivering (and raises the command's refusals), so that every attempt runs
    this same code.

    This is the hot path: the common case (closed circuit, free slot, success) is written out
    in one frame with the lock's token and literal indexes; every other case leaves it
    through a helper. It reads and writes ``core``'s fields inline on purpose (each helper
    call costs ~50 ns, the whole shortcut ~400 ns), and reads them through ``core`` rather
    than from closure cells: with 10,000 commands in use every object a call touches is a
    cache miss: 16 cells (each a separate object, several pointing at bound methods) cost
    ~0.3-0.5 µs a call more there than these few, and were no faster with one command.
    """
    token = core.token  # the lock, inline: token.pop() takes it, token.append(True) gives it
    shared_clock = core.clock is timer  # production: one reading serves duration and window
    attempts: list[Callable[..., Coroutine[Any, Any, Any]]] = []  # the report caller, once

    async def call(*args: Any, **kwargs: Any) -> Any:
        held = started = deadline = owed = None; gen = REFUSED; ticket = _NO_TICKET  # noqa: E702
        while True:  # (never loops: ``break`` takes a refusal past both handlers, raised below)
            try:  # (the outer handler: for an interrupt landing in the inner one, or after it)
                try:
                    try:
                        held = token.pop()
                    except IndexError:
                        held = wait_token(token)  # contended: another thread holds it
                    if core.in_flight < core.limit:  # closed, not forced, a slot free, none waiting
                        core.in_flight += 1; gen = core.gen; held = token.append(True)  # noqa: E702
                    else:  # every call is a checkpoint: yield once, then admit, wait or refuse
                        held = token.append(True); ticket = []; gen = YIELDING  # noqa: E702
                        await checkpoint()
                        box: list[CommandError] = []
                        gen = admit_or_refuse(core, ticket, box)
                        if gen < 0:
                            if gen == NEED_WAITER:
                                gen = await admit_waiting(core, ticket)
                            elif fallback is None:
                                break
                            else:
                                raise box.pop()  # to the fallback, through the handler
                    timeout = core.timeout
                    started = timer()
                    if timeout is None:  # (``**{}`` would build and merge a dict: ~45 ns)
                        result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                    else:
                        loop = running_loop()
                        if loop is None:
                            result = await in_cancel_scope(fn, args, kwargs, timeout)
                        else:
                            # the inline asyncio deadline (no nested try: its line would be outside
                            # the handler below); the handler tells our cancel from the caller's
                            deadline = Deadline(loop, _current_task(loop), timeout)  # type: ignore[arg-type]
                            result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                            deadline.disarm()  # (the function may have swallowed our cancel)
                    failed_if = core.failed_if
                    if failed_if is not None:
                        judge(failed_if, result)
                    ended = timer()
                    duration = ended - started
                    if not shared_clock:
                        ended = core.clock()  # a test clock: the window runs on it
                    try: held = token.pop()  # noqa: E701  (one line: see the tails below)
                    except IndexError: held = wait_token(token)  # noqa: E701  (contended)
                    if core.in_flight >= core.max:  # maybe a waiter to hand the slot to (if none
                        core.release(); g = gen; gen = RELEASED  # noqa: E702  waits, in_flight < max)
                    else:
                        core.in_flight -= 1; g = gen; gen = RELEASED  # noqa: E702
                    counts = core.counts
                    counts[0] += 1  # SUCCESS
                    if duration <= FIRST_BOUND:
                        counts[DURATION_AT] += 1
                    else:
                        counts[DURATION_AT + bisect_left(DURATION_BUCKETS, duration)] += 1
                    counts[DURATION_SUM] += duration
                    window = core.window
                    if g == core.fast_gen:  # closed, not forced, admitted in this state
                        if ended < window.fast_until:
                            # volume reached, same bucket as the last full check: a success
                            # only lowers the error rate, so health cannot change
                            window.cum[0] += 1; held = token.append(True)  # noqa: E702
                            return result
                        # (record_window's closed case, inline: every sparse call comes here)
                        requests, errors = window.tally(ended, SUCCESS)
                        if requests >= core.volume:  # (judge() inline while healthy)
                            if 100 * errors < core.trip_percent * requests:
                                window.fast_until = window.end
                            else:
                                core.judge(ended, requests, errors)
                    else:
                        core.record_window(g, SUCCESS, ended)
                    if core.events:  # a transition (rare): publish after letting go
                        events = core.take_events(); held = token.append(True)  # noqa: E702
                        if events:
                            publish(core, events)
                        return result
                    held = token.append(True)
                    return result
                except BaseException as exc:
                    if held:
                        held = token.append(True)
                    if gen < 0 and gen != RELEASED and ticket:
                        gen = ticket[0]  # interrupted inside admit() after it took a slot
                    elif gen == YIELDING and not isinstance(exc, REFUSALS):
                        core.lock.run(core.count, CANCELLED)  # cancelled at its checkpoint
                    if deadline is not None and deadline.disarm() and isinstance(
                        exc, _CancelledError
                    ):
                        error: BaseException = Expired(deadline.delay, deadline.when)  # ours
                    elif gen >= 0 or (fallback is not None and isinstance(exc, REFUSALS)):
                        error = exc
                    else:
                        raise
                owed = [gen]  # the slot this call holds, until finish() gives it back
                # Outside the handler, so that nothing we raise from here chains to a private
                # error. (One-line try: a ``try:`` line of its own is outside the outer handler.)
                try: return await after_failure(core, fn, args, kwargs, gen, error, started, fallback, owed, report, attempts)  # noqa: E501, E701
                finally: del error  # noqa: E701  (no exception -> traceback -> frame -> exception cycle)
            except BaseException:
                if held:
                    held = token.append(True)
                if gen >= 0 or ticket:  # (a refusal holds nothing: no call on its path)
                    give_back(core, gen, ticket, owed)
                raise
        raise box.pop()  # a refusal without a fallback: raised once, outside every handler

    return call


async def after_failure(
    core: CircuitCore,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    gen: int,
    error: BaseException,
    started: float | None,
    fallback: Fallback | None,
    owed: list[int],
    report: bool,
    attempts: list[Callable[..., Coroutine[Any, Any, Any]]],
) -> Any:
    """The call did not succeed (``gen < 0``: refused, with a fallback): count it, then
    fall back, report (an attempt of a retry loop) or retry."""
    if gen < 0:
        assert fallback is not None and isinstance(error, Exception)
        return await call_fallback(core, fallback, error)
    if core.retry is None and not report:
        return await failed(core, gen, error, started, fallback, owed)
    action, outcome = await conclude(core, gen, error, started, owed)
    del error
    if report:
        return Failed(action, outcome)
    if not attempts:
        attempts.append(coroutine_caller(core, fn, None, True))
    return await retry_async(core, attempts[0], args, kwargs, action, outcome, fallback)


async def in_cancel_scope(
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
) -> Any:
    with anyio.move_on_after(timeout) as scope:
        return await fn(*args, **kwargs)
    raise Expired(timeout, scope.deadline)


async def retry_async(
    core: CircuitCore,
    attempt: Callable[..., Coroutine[Any, Any, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    action: int,
    error: Any,
    fallback: Fallback | None,
) -> Any:
    """The first attempt failed (``action``, ``error`` as ``settle`` decided): run the next
    attempts through ``attempt`` (a report caller) while the policy allows, then deliver the
    last outcome. Sleeps are cancellable and never run past the caller's deadline."""
    policy = core.retry
    number = 1
    try:
        while action == FALLBACK and policy is not None:
            deadline = anyio.current_effective_deadline()
            left = _INF if deadline == _INF else deadline - anyio.current_time()
            delay = next_delay(core, policy, number, error, left)
            if delay < 0:
                break
            await anyio.sleep(delay)
            retried(core)
            number += 1
            try:
                outcome = await attempt(*args, **kwargs)
            except REFUSALS as exc:  # the command's own refusal: never retried
                action, error = REFUSAL, exc
                break
            if type(outcome) is not Failed:
                return outcome
            action, error = outcome.action, outcome.error
        return await deliver(core, action, error, fallback)
    finally:
        del error
