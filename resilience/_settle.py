"""What happens after a call was admitted: count its outcome, then deliver it.

``settle`` counts the outcome (giving the slot back) and says what the caller gets;
``deliver`` gives it: the fallback's value, the failed result, or the error raised. Between
the two, a retry policy may run more attempts (``next_delay`` decides, per call: nothing
here is shared between calls but the command's counters). ``Expired`` and ``Verdict`` are the
private signals of a timeout and a failed result; they never reach the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from ._backend import outer_deadline_first
from ._circuit import CircuitCore, publish, timer
from ._errors import CommandTimeoutError, FailedResultError
from ._events import RetryScheduled
from ._metrics_schema import RETRIED, RETRIES_EXHAUSTED, RETRY_BUDGET_EXHAUSTED, RETRY_DEADLINE
from ._outcomes import CANCELLED, FAILURE, IGNORED, TIMEOUT
from ._retry import Retry, hint_of

__all__ = [
    "FALLBACK",
    "RAISE",
    "REFUSAL",
    "RELEASED",
    "Expired",
    "Failed",
    "Fallback",
    "Owed",
    "Verdict",
    "call_fallback",
    "chain",
    "conclude",
    "deliver",
    "failed",
    "fallback_failed",
    "finish",
    "give_back",
    "judge",
    "next_delay",
    "retried",
    "settle",
]

Fallback = Callable[[Exception], Any]
#: A caller's record of the slot it holds (see ``finish``).
Owed = list[int] | None
#: A ``gen`` value of the async hot path: the slot was given back.
RELEASED = -10

_CancelledError = asyncio.CancelledError
_retry_log = logging.getLogger("resilience.retry")

#: What the caller of an attempt gets: raise the error as is; the error for the fallback
#: (without one: raise it, or return a failed result's value); the command's own refusal.
RAISE, FALLBACK, REFUSAL = 0, 1, 2

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


def kind_of(core: CircuitCore, exc: BaseException) -> int:
    """The outcome kind of an exception that ended a call (may raise the predicate's error)."""
    if not isinstance(exc, Exception):
        return CANCELLED  # cancellation, KeyboardInterrupt, SystemExit, GeneratorExit...
    ignore: Any = core.ignore
    if ignore.__class__ is tuple:
        if ignore and isinstance(exc, ignore):
            return IGNORED
    elif ignore(exc):
        return IGNORED
    return FAILURE


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
    core: CircuitCore, gen: int, kind: int, duration: float | None, owed: Owed = None
) -> None:
    """Count the outcome, giving the slot back if ``owed`` says the caller still holds it
    (one critical section), then publish the events it caused.

    ``owed`` is the caller's record of its slot: a non-empty list while held, emptied on the
    line that gives it back, so that a caller interrupted anywhere knows whether it still
    holds the slot (``None``: the slot is not this caller's to give, e.g. a shared one).
    """
    lock = core.lock
    held: bool | None = False
    try:
        held = lock.acquire()
        if owed:
            core.release(); owed.clear()  # noqa: E702  (one line: see above)
        core.record(gen, kind, duration)
        events = core.take_events()
        held = lock.give(True)
    finally:
        if held:
            lock.give(True)
    if events:
        publish(core, events)


def settle(
    core: CircuitCore, gen: int, exc: BaseException, duration: float | None, owed: Owed = None
) -> tuple[int, Any]:
    """An admitted call ended with ``exc``: count it (giving the slot back if ``owed``)
    and say what the caller gets: ``(RAISE, error)``, or ``(FALLBACK, error)``: the error for
    the fallback (without one, raise it; a ``FailedResultError``'s result is returned)."""
    if isinstance(exc, Expired):
        finish(core, gen, TIMEOUT, duration, owed)
        return FALLBACK, CommandTimeoutError(core.name, timeout=exc.timeout)
    if isinstance(exc, Verdict):
        finish(core, gen, FAILURE, duration, owed)
        if exc.error is not None:
            return RAISE, exc.error
        return FALLBACK, failed_result(core, exc.value)
    try:
        kind = kind_of(core, exc)
    except BaseException:
        finish(core, gen, FAILURE, duration, owed)  # the ignore predicate raised
        raise
    finish(core, gen, kind, None if kind == CANCELLED else duration, owed)
    if kind >= IGNORED:
        return RAISE, exc
    return FALLBACK, exc


def give_back(core: CircuitCore, gen: int, ticket: list[int], owed: Owed) -> None:
    """An interrupt landed between admission and completion (outside every other handler):
    give back the slot still held, if any, counting the call as cancelled. ``owed`` is
    ``None`` while the caller has not recorded its slot yet (held if ``gen >= 0``)."""
    if gen < 0 and gen != RELEASED and ticket:
        gen = ticket[0]  # interrupted inside admission, after it took a slot
    if gen >= 0 and (owed is None or owed):
        finish(core, gen, CANCELLED, None, owed if owed is not None else [gen])


def failed_result(core: CircuitCore, value: Any) -> FailedResultError:
    """The error for a failed result. A ``failed_if`` object with a ``retry_after_of(value)``
    method (the httpx transport's: a ``Retry-After`` header) gives the result's hint."""
    hint_from = getattr(core.failed_if, "retry_after_of", None)
    hint = hint_from(value) if hint_from is not None else None
    return FailedResultError(core.name, result=value, retry_after=hint)


async def conclude(
    core: CircuitCore, gen: int, exc: BaseException, started: float | None, owed: Owed = None
) -> tuple[int, Any]:
    """``settle`` for async callers: a timeout first lets the caller's own deadline win a
    tie (its cancellation then propagates, and the call counts as cancelled)."""
    duration = None if started is None else timer() - started
    try:
        if isinstance(exc, Expired):
            try:
                await outer_deadline_first(exc.when)
            except BaseException:
                finish(core, gen, CANCELLED, None, owed)
                raise
        return settle(core, gen, exc, duration, owed)
    finally:
        del exc


async def deliver(core: CircuitCore, action: int, error: Any, fallback: Fallback | None) -> Any:
    """Give the caller what ``settle`` (or the last attempt) decided."""
    try:
        if action != RAISE and fallback is not None:
            return await call_fallback(core, fallback, error)
        if action == FALLBACK and isinstance(error, FailedResultError):
            return error.result  # a failed result without a fallback is returned as is
        raise error
    finally:
        del error


async def failed(
    core: CircuitCore,
    gen: int,
    exc: BaseException,
    started: float | None,
    fallback: Fallback | None,
    owed: Owed = None,
) -> Any:
    """An admitted call ended with ``exc``: count it, give the slot back, run the fallback."""
    try:
        action, error = await conclude(core, gen, exc, started, owed)
    finally:
        del exc
    try:
        return await deliver(core, action, error, fallback)
    finally:
        del error


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


class Failed:
    """What a retried attempt reports instead of delivering: ``action`` and ``error`` as
    ``settle`` decided. (A private type: a function's own return value is never one.)"""

    __slots__ = ("action", "error")

    def __init__(self, action: int, error: Any) -> None:
        self.action = action
        self.error = error


def next_delay(core: CircuitCore, policy: Retry, attempt: int, error: Any, left: float) -> float:
    """How long to sleep before retrying after failed attempt number ``attempt``, or -1.0 to
    stop (the outcome is counted). ``left``: seconds to the caller's deadline (inf if none).

    Order: ``on`` (not retried: nothing counted), attempts used up or a hint beyond
    ``max_backoff`` (exhausted), the caller's deadline, then the budget (taken last, so only
    a retry that will happen spends it). The ``RetryScheduled`` event is published here.
    """
    if not policy.retries(error):
        return -1.0
    hint = hint_of(error)
    if attempt >= policy.attempts or (hint is not None and hint > policy.max_backoff):
        outcome = RETRIES_EXHAUSTED
    else:
        delay = policy.delay(attempt)
        if hint is not None and hint > delay:
            delay = hint
        if delay >= left:
            outcome = RETRY_DEADLINE
        elif core.lock.run(core.take_retry, policy.budget, policy.min_retries_per_second):
            if _retry_log.isEnabledFor(logging.DEBUG):
                _retry_log.debug("command %r: attempt %d failed (%r), retrying in %.3fs",
                                 core.name, attempt, error, delay)
            if core.bus.subscribers:
                core.bus.publish(
                    RetryScheduled(command=core.name, attempt=attempt, delay=delay, error=error)
                )
            return delay
        else:
            outcome = RETRY_BUDGET_EXHAUSTED
    core.lock.run(core.count_retry, outcome)
    return -1.0


def retried(core: CircuitCore) -> None:
    """A retry attempt is about to run (its sleep is over)."""
    core.lock.run(core.count_retry, RETRIED)
