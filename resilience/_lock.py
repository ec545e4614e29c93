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
from typing import Any, Protocol, TypeVar

__all__ = ["Token", "TokenLock", "wait_token"]

_sleep = time.sleep
T = TypeVar("T")


class Token(Protocol):
    """A lock's token list as the hot paths use it: ``held = token.append(True)`` clears
    ``held`` on the line that gives the token back (``append`` returns ``None``)."""

    def pop(self) -> bool: ...

    def append(self, token: bool, /) -> Any: ...

    def __len__(self) -> int: ...


def wait_token(token: Token) -> bool:
    """Take ``token`` (a :attr:`TokenLock.token`), waiting for it; returns ``True``.

    :meth:`TokenLock.acquire` for a hot path that holds the token list but not the lock
    (one object fewer to touch). Taking it and returning are one line, so an interrupt (a
    ``KeyboardInterrupt`` from a signal handler) lands either before the token is taken or
    after the caller knows.
    """
    while True:
        try:
            return token.pop()
        except IndexError:
            _sleep(0)  # held by another thread for a few bytecodes: let it finish


class TokenLock:
    """``with lock:`` for slow paths; ``lock.take()`` / ``lock.give()`` inline on hot paths."""

    __slots__ = ("give", "take", "token")

    def __init__(self) -> None:
        #: The token itself: ``token.pop()`` takes it (``IndexError`` if another thread holds
        #: it: then call :meth:`acquire`), ``token.append(True)`` gives it back. The command
        #: hot path calls these inline (one cell and one object less per command than the
        #: bound methods below: it matters at 10,000 commands, where every object is a cache miss).
        self.token: Token = [True]  # pop() returns True: acquire's result
        #: Take the token: raises ``IndexError`` if another thread holds it (then call acquire).
        self.take = self.token.pop
        #: Give the token back: ``give(True)``.
        self.give: Callable[[bool], None] = self.token.append

    def acquire(self) -> bool:
        """Take the token, waiting for it; returns ``True`` (see :func:`wait_token`)."""
        return wait_token(self.token)

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
        if self.token:
            raise RuntimeError("release of an unlocked TokenLock")
        self.give(True)

    def locked(self) -> bool:
        return not self.token

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.give(True)
