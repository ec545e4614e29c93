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

__all__ = ["ThreadPool"]

_IDLE_SECONDS = 10.0


class ThreadPool:
    """Run callables in daemon threads, reusing idle ones."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for work that nobody has claimed yet
        self._started = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        """Run ``fn(*args)`` in a worker thread, in a copy of the caller's context."""
        fut: Future[Any] = Future()
        ctx = contextvars.copy_context()
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._started += 1
                number = self._started
            else:
                self._idle -= 1
        self._queue.put((fut, ctx.run, (fn, *args)))
        if spawn:
            threading.Thread(
                target=self._work, name=f"resilience-{self._name}-{number}", daemon=True
            ).start()
        return fut

    def _work(self) -> None:
        get = self._queue.get
        while True:
            try:
                fut, fn, args = get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # an unclaimed idle thread may leave
                        self._idle -= 1
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
            with self._lock:
                self._idle += 1
