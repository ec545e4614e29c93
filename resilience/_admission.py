"""Admission of a call that the hot path's shortcut does not take: the circuit is not
closed, no slot is free, or callers already wait for one.

Shared by the async and the sync runners. Every call is a checkpoint (a refused one too),
waiters are served first come, first served, and a waiter that gives up leaves nothing
behind. Each function hands the generation it was admitted in to its caller, or raises the
refusal (``CircuitOpenError``, ``MaxConcurrencyError``).
"""

from __future__ import annotations

from typing import Any, NoReturn

import anyio

from ._backend import Wakeup, checkpoint
from ._circuit import NEED_WAITER, REFUSED, WAITING, CircuitCore, SlotWaiter, publish
from ._errors import CircuitOpenError, CommandError, MaxConcurrencyError
from ._lock import wait_token
from ._outcomes import CANCELLED

__all__ = [
    "REFUSALS", "admit", "admit_now", "admit_or_refuse", "admit_waiting", "dequeue", "enqueue",
]

#: The command's own refusals.
REFUSALS = (CircuitOpenError, MaxConcurrencyError)


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
    refusal."""
    box: list[CommandError] = []
    gen = admit_or_refuse(core, ticket, box)
    if gen == REFUSED:
        raise box.pop()  # (not from a local: no exception -> traceback -> frame cycle)
    return gen


def admit_or_refuse(core: CircuitCore, ticket: list[int], box: list[CommandError]) -> int:
    """``admit_now`` that hands the refusal over in ``box`` (returning REFUSED) instead of
    raising it, so that the caller raises it once, from where it stands. (``lock.run``
    written inline: this is the refused call's path.)"""
    token = core.token
    held: Any = False
    try:
        try: held = token.pop()  # noqa: E701  (one-line try: inside the handler)
        except IndexError: held = wait_token(token)  # noqa: E701  (contended)
        gen = core.admit(ticket, None)
        refused = core.refused
        core.refused = None
        events = core.events and core.take_events()
        held = token.append(True)
    finally:
        if held:
            token.append(True)
    if events:
        publish(core, events)
    if refused is not None:
        box.append(refused)
    return gen


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
