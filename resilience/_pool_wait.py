"""One-shot waiters for the pool's hot path: park one task, wake it once.

``anyio.Event`` costs ~1.5 us to create and two layers of dispatch to wait on; the pool
parks and wakes tasks on every queue-empty/queue-full transition and for every awaited
handle, so it uses the native primitive of the running backend instead (an asyncio future,
or trio's ``wait_task_rescheduled``). Both cooperate with anyio cancel scopes exactly like
``anyio.Event``: a cancelled wait raises the backend's cancellation exception. A waiter
belongs to one waiting task (cancelling it may cancel the asyncio future it waits on).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, Protocol

import anyio

__all__ = ["Waiter", "waiter_factory"]


class Waiter(Protocol):
    def set(self) -> None: ...

    async def wait(self) -> None: ...


class _AsyncioWaiter:
    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    async def wait(self) -> None:
        await self._fut


def _trio_factory() -> Callable[[], Waiter]:
    from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

    class _TrioWaiter:
        __slots__ = ("_is_set", "_task")

        def __init__(self) -> None:
            self._task: Any = None
            self._is_set = False

        def set(self) -> None:
            if not self._is_set:
                self._is_set = True
                task = self._task
                if task is not None:
                    self._task = None
                    reschedule(task)

        def _abort(self, _: Any) -> Abort:
            # trio calls this synchronously when the wait is cancelled: forget the task at
            # once, so that a set() before it resumes does not reschedule it a second time
            self._task = None
            return Abort.SUCCEEDED

        async def wait(self) -> None:
            if self._is_set:
                return
            self._task = current_task()
            await wait_task_rescheduled(self._abort)

    return _TrioWaiter


def waiter_factory() -> Callable[[], Waiter]:
    """The waiter class for the running backend (``anyio.Event`` for unknown ones)."""
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return _trio_factory()
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - another anyio backend
        return anyio.Event
    return _AsyncioWaiter
