"""A mutex for the command hot path that costs a fifth of ``threading.Lock``.

In CPython 3.11 ``Lock.acquire()`` goes through the generic call path and parses keyword
arguments on every call: an acquire/release pair costs ~100 ns, twice per command call. This
lock is a one-element list: ``pop()`` takes the token and ``append()`` gives it back, both
single C calls that are atomic (under the GIL, and under free-threading's per-object locks),
~20 ns a pair.

Only tiny critical sections use it: they never block, await or call user code while holding
it (the one exception, an injectable test clock, is guarded with ``try/finally``). So contention
is rare and brief, and a waiter simply spins with ``time.sleep(0)``, which drops the GIL so the
holder can finish. Not reentrant, like ``threading.Lock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TokenLock"]

_sleep = time.sleep
T = TypeVar("T")


class TokenLock:
    """``with lock:`` for slow paths; ``lock.take()`` / ``lock.give()`` inline on hot paths."""

    __slots__ = ("_token", "give", "take")

    def __init__(self) -> None:
        self._token: list[bool] = [True]  # pop() returns True: acquire's result
        #: Take the token: raises ``IndexError`` if another thread holds it (then call acquire).
        self.take = self._token.pop
        #: Give the token back: ``give(True)``.
        self.give = self._token.append

    def acquire(self) -> bool:
        """Take the token, waiting for it; returns ``True``.

        Taking it and returning are one line, so an interrupt (a ``KeyboardInterrupt`` from a
        signal handler) lands either before the token is taken or after the caller knows.
        """
        take = self.take
        while True:
            try:
                return take()
            except IndexError:
                _sleep(0)  # held by another thread for a few bytecodes: let it finish

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` with the lock held; whatever interrupts it, the lock is given back.

        A ``with lock:`` block cannot promise that: an interrupt landing on the line of a
        Python-level ``__exit__`` leaves the lock held. Here ``held`` is cleared on the line
        that gives the token back, and the ``finally`` gives it only while still held.
        """
        held: bool | None = False
        try:
            held = self.acquire()
            result = fn(*args)
            held = self.give(True)
            return result
        finally:
            if held:
                self.give(True)

    def release(self) -> None:
        if self._token:
            raise RuntimeError("release of an unlocked TokenLock")
        self.give(True)

    def locked(self) -> bool:
        return not self._token

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.give(True)
