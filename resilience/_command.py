"""Executing one call through a command: admission, timeout, outcome, fallback.

Admission and completion are each one short critical section under the command's lock
(see ``_circuit``). Between them the function runs with no lock held: a coroutine in the
caller's task under a real cancel scope, anything else in a worker thread. Whatever ends a
call (result, exception, timeout, cancellation, ``BaseException``) its slot is given back
exactly once: by the caller for coroutines, and by whichever of caller and worker thread
finishes last for threaded calls.
"""

from __future__ import annotations

import asyncio
import inspect
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from functools import partial
from typing import Any

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from ._circuit import CANCELLED, IGNORED, Circuit
from ._errors import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError
from ._rolling import FAILURE, SUCCESS, TIMEOUT

__all__ = ["call_async", "call_sync", "coroutine_caller"]

Fallback = Callable[[BaseException], Any]

_asyncio_timeout = asyncio.timeout
_running_loop = asyncio.get_running_loop
_current_task = asyncio.current_task
_CancelledError = asyncio.CancelledError
_REFUSED = (CircuitOpenError, MaxConcurrencyError)  # what _admit raises


from ._backend import running_loop as _running_loop_or_none


def _on_asyncio() -> bool:
    return _running_loop_or_none() is not None


def _kind_of(circ: Circuit, exc: BaseException) -> int:
    ignore = circ._config.ignore_exceptions
    if ignore and isinstance(exc, ignore):
        return IGNORED
    if isinstance(exc, Exception):
        return FAILURE
    return CANCELLED  # cancellation, KeyboardInterrupt, SystemExit, ...


def _admit(circ: Circuit) -> int:
    """Take a slot or raise the refusal (the threaded paths, where a frame is cheap)."""
    with circ._lock:
        gen = circ._admit_locked()
        refused = circ._refused
        circ._refused = None
    if refused is not None:
        raise refused
    return gen


def _finish(circ: Circuit, gen: int, kind: int, started: float, release: bool) -> None:
    duration = None if kind == CANCELLED else circ._now() - started
    with circ._lock:
        if release:
            circ._in_flight -= 1
        circ._record(gen, kind, duration)


# -- coroutines -----------------------------------------------------------------------------------


def coroutine_caller(
    circ: Circuit, fn: Callable[..., Awaitable[Any]], fallback: Fallback | None
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """An ``async def`` that runs ``fn`` in the caller's task through ``circ``.

    This is the hot path, so the common case (closed circuit, free slot, success) is written
    out in one frame, with literal indexes (0 = success) and the lock's own methods; every
    other case leaves it through a helper. The two critical sections cannot raise (no user
    code, no allocation beyond small objects), so they need no try/finally.
    """
    lock = circ._lock
    take, give = lock.take, lock.give  # see _lock: the token lock's inline form
    hist = circ._duration
    bounds, counts = hist.bounds, hist.counts
    first_bound = bounds[0]

    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            take()
        except IndexError:
            lock.acquire()  # contended: another thread is in a critical section
        if circ._in_flight < circ._fast_limit:  # closed, not forced, a slot free
            circ._in_flight += 1
            gen = circ._gen
            give(True)
        else:
            try:
                gen = circ._admit_locked()
                if gen < 0:  # refused: the error waits on the circuit, under the lock
                    refused = circ._refused
                    circ._refused = None
            finally:
                give(True)
            if gen < 0:
                if fallback is not None:
                    return await _fallback_async(circ, fallback, refused)
                try:
                    raise refused
                finally:
                    del refused  # no exception -> traceback -> frame -> exception cycle
        timeout = circ._timeout
        now = circ._now
        started = now()
        try:
            if timeout is None:
                result = await fn(*args, **kwargs)
            elif _on_asyncio():
                # asyncio.timeout's protocol, inline: cancel the task at the deadline, and on
                # the way out count our cancel back with uncancel(); only if nobody else
                # cancelled the task too is the CancelledError ours to turn into a timeout.
                loop = _running_loop()
                task: Any = _current_task(loop)
                cancelling = task.cancelling()
                deadline = _Deadline(task)
                handle = loop.call_at(loop.time() + timeout, deadline)
                try:
                    result = await fn(*args, **kwargs)
                except _CancelledError:
                    if deadline.fired and task.uncancel() <= cancelling:
                        raise _Expired(timeout) from None
                    raise
                except BaseException:
                    if deadline.fired:  # the function turned our cancel into another error
                        task.uncancel()
                    raise
                finally:
                    handle.cancel()
                if deadline.fired:  # it fired, but the function swallowed the cancellation
                    task.uncancel()
            else:
                result = await _in_cancel_scope(fn, args, kwargs, timeout)
        except BaseException as exc:
            return await _failed_async(circ, gen, exc, started, fallback, release=True)
        ended = now()
        duration = ended - started
        try:
            take()
        except IndexError:
            lock.acquire()
        circ._in_flight -= 1
        # The lifetime success counter is the duration histogram itself (see CommandSeries).
        if duration <= first_bound:
            counts[0] += 1
        else:
            counts[bisect_left(bounds, duration)] += 1
        hist.sum += duration
        window = circ._window
        if ended < window.end and gen == circ._fast_gen:
            # Closed, current, same bucket as the last evaluated outcome: a success lowers
            # the error rate, so health can only change when it completes the volume.
            window.bucket[0] += 1
            countdown = window.countdown
            if countdown:
                window.countdown = countdown - 1
                if countdown == 1:
                    circ.check_health(ended)
            give(True)
        else:
            try:
                circ._record_window(gen, SUCCESS)
            finally:
                give(True)
        return result

    return call


class _Deadline:
    """Timer callback of the inline asyncio deadline: cancels the task, remembers it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


class _Expired(Exception):
    """Our own deadline passed (a CommandTimeoutError from a nested command is not ours)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout


async def _in_cancel_scope(
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
) -> Any:
    with anyio.move_on_after(timeout) as scope:
        return await fn(*args, **kwargs)
    if scope.cancelled_caught:
        await checkpoint_if_cancelled()  # an outer cancellation wins over our deadline
    raise _Expired(timeout)


async def _failed_async(
    circ: Circuit,
    gen: int,
    exc: BaseException,
    started: float,
    fallback: Fallback | None,
    *,
    release: bool,
) -> Any:
    try:
        if isinstance(exc, _Expired):
            _finish(circ, gen, TIMEOUT, started, release)
            error = CommandTimeoutError(circ.name, timeout=exc.timeout)
            if fallback is None:
                raise error from None
            return await _fallback_async(circ, fallback, error)
        kind = _kind_of(circ, exc)
        _finish(circ, gen, kind, started, release)
        if fallback is None or kind >= IGNORED:
            raise exc
        return await _fallback_async(circ, fallback, exc)
    finally:
        del exc  # break the exception -> traceback -> this frame -> exception cycle


async def _fallback_async(circ: Circuit, fallback: Fallback, exc: BaseException) -> Any:
    try:
        value = fallback(exc)
        if inspect.isawaitable(value):
            value = await value
    except Exception:
        with circ._lock:
            circ._record_fallback(False)
        raise
    with circ._lock:
        circ._record_fallback(True)
    return value


# -- threads, from async code ---------------------------------------------------------------------


class _SharedSlot:
    """A slot held by both the caller and a worker thread; freed when both let go."""

    __slots__ = ("_circ", "_holders")

    def __init__(self, circ: Circuit) -> None:
        self._circ = circ
        self._holders = 2

    def drop(self, _: object = None) -> None:
        circ = self._circ
        with circ._lock:
            self._holders -= 1
            if self._holders == 0:
                circ._in_flight -= 1


async def call_async(
    circ: Circuit,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fallback: Fallback | None,
) -> Any:
    """Run a non-coroutine callable in a worker thread, awaiting it from async code."""
    try:
        gen, slot, fut = _start_thread(circ, fn, args, kwargs)
    except _REFUSED as exc:
        if fallback is None:
            raise
        return await _fallback_async(circ, fallback, exc)
    timeout = circ._timeout
    started = circ._now()
    try:
        try:
            if timeout is None:
                result = await _thread_result(fut)
            elif _on_asyncio():
                try:
                    async with _asyncio_timeout(timeout) as scope:
                        result = await _thread_result(fut)
                except TimeoutError:
                    if not scope.expired():
                        raise
                    raise _Expired(timeout) from None
            else:
                result = await _in_cancel_scope(_thread_result, (fut,), {}, timeout)
        finally:
            slot.drop()
    except BaseException as exc:
        return await _failed_async(circ, gen, exc, started, fallback, release=False)
    _finish(circ, gen, SUCCESS, started, release=False)
    return result


def _start_thread(
    circ: Circuit, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, _SharedSlot, Future[Any]]:
    """Admit a threaded call (or raise the refusal) and start it in a worker thread.

    The slot is shared by the caller and the thread: freed when both have let go.
    """
    gen = _admit(circ)
    slot = _SharedSlot(circ)
    try:
        if kwargs:
            fut = circ.threads().submit(partial(fn, *args, **kwargs), ())
        else:
            fut = circ.threads().submit(fn, args)
    except BaseException:
        slot.drop()
        slot.drop()
        raise
    fut.add_done_callback(slot.drop)
    return gen, slot, fut


async def _thread_result(fut: Future[Any]) -> Any:
    """Wait for a worker thread's result; then await it if it is awaitable."""
    if _on_asyncio():
        result = await asyncio.wrap_future(fut)
    else:
        import trio

        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        await done.wait()
        result = fut.result()
    if inspect.isawaitable(result):
        result = await result
    return result


# -- threads, from sync code -----------------------------------------------------------------------


def call_sync(
    circ: Circuit,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fallback: Fallback | None,
) -> Any:
    """Run ``fn`` in a worker thread and wait for it here, under the command's timeout."""
    try:
        gen, slot, fut = _start_thread(circ, fn, args, kwargs)
    except _REFUSED as exc:
        if fallback is None:
            raise
        return _fallback_sync(circ, fallback, exc)
    timeout = circ._timeout
    started = circ._now()
    try:
        try:
            error = fut.exception(timeout)  # TimeoutError only while still running
        finally:
            slot.drop()
    except TimeoutError:
        assert timeout is not None
        error = CommandTimeoutError(circ.name, timeout=timeout)
        kind = TIMEOUT
    except BaseException:  # e.g. KeyboardInterrupt while waiting: not our failure
        _finish(circ, gen, CANCELLED, started, release=False)
        raise
    else:
        if error is None:
            _finish(circ, gen, SUCCESS, started, release=False)
            return fut.result()
        kind = _kind_of(circ, error)
    _finish(circ, gen, kind, started, release=False)
    if fallback is None or kind >= IGNORED:
        raise error
    return _fallback_sync(circ, fallback, error)


def _fallback_sync(circ: Circuit, fallback: Fallback, exc: BaseException) -> Any:
    try:
        value = fallback(exc)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError(
                f"command {circ.name!r}: the fallback of a sync call returned an awaitable; "
                "use a plain function as fallback for plain def commands"
            )
    except Exception:
        with circ._lock:
            circ._record_fallback(False)
        raise
    with circ._lock:
        circ._record_fallback(True)
    return value

