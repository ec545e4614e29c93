"""Worker threads for plain ``def`` commands.

Threads are daemons started on demand and reaped after a while idle. The pool itself has no
bound: it is bounded by the command's concurrency slots, because a call only reaches it
while holding one, and a thread that outlives its caller's timeout keeps that slot until it
returns. Being daemons, threads stuck in a hung call never block interpreter exit.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._lock import TokenLock

__all__ = ["ThreadPool"]

_IDLE_SECONDS = 10.0


class ThreadPool:
    """Run callables in daemon threads, reusing idle ones."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._queue = queue.SimpleQueue()
        self._lock = TokenLock()  # interrupt-safe (see TokenLock.run)
        self._idle = 0  # threads waiting for work that nobody has claimed yet
        self._started = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        """Run ``fn(*args)`` in a worker thread, in a copy of the caller's context."""
        fut: Future[Any] = Future()
        ctx = contextvars.copy_context()
        spawn, number = self._lock.run(self._claim)
        self._queue.put((fut, ctx.run, (fn, *args)))
        if spawn:
            threading.Thread(
                target=self._work, name=f"resilience-{self._name}-{number}", daemon=True
            ).start()
        return fut

    def _claim(self) -> tuple[bool, int]:
        """Claim an idle thread, or count one more to start (lock held)."""
        if self._idle == 0:
            self._started += 1
            return True, self._started
        self._idle -= 1
        return False, 0

    def _leave(self) -> bool:
        """An idle thread may leave if nobody claimed it (lock held)."""
        if self._idle > 0:
            self._idle -= 1
            return True
        return False

    def _idle_again(self) -> None:
        self._idle += 1

    def _work(self) -> None:
        get = self._queue.get
        while True:
            try:
                fut, fn, args = get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self._lock.run(self._leave):  # an unclaimed idle thread may leave
                    return
                continue  # a submitter claimed us: its job is on its way
            if fut.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            del fut, fn, args
            result = None  # nothing of the last job stays alive while idle
            self._lock.run(self._idle_again)
