"""The pool's static types, for ``mypy --strict`` (pytest runs the right calls too).

``submit``, ``submit_nowait``, ``run`` and ``map`` are typed like anyio's ``run_sync``: the
arguments must fit the function, and the result type comes through (``async def`` jobs give
what they return, not their coroutine). Each wrong call below carries a
``# type: ignore[code]``: ``--strict`` turns on ``warn_unused_ignores``, so mypy passes over
this file only if every one of those calls is rejected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import assert_type

import anyio
from prometheus_client import CollectorRegistry

from resilience import JobHandle, WorkerPool


async def fetch(key: int, label: str) -> bytes:
    await anyio.lowlevel.checkpoint()
    return f"{label}{key}".encode()


async def fetch_m(key: int) -> bytes:
    return await fetch(key, "m")


def parse(raw: bytes) -> int:
    return len(raw)


async def nothing() -> None:
    await anyio.lowlevel.checkpoint()


async def agen() -> AsyncIterator[bytes]:
    yield b"abc"


def pool() -> WorkerPool:
    return WorkerPool(2, 2, "typed", metrics_registry=CollectorRegistry())


async def test_result_types_come_through() -> None:
    async with pool() as p:
        handle = p.submit_nowait(fetch, 1, "a")
        assert_type(handle, JobHandle[bytes])
        assert_type(await handle, bytes)
        assert_type(await p.submit(parse, b"xy"), JobHandle[int])
        assert_type(await p.run(parse, b"xyz"), int)
        assert_type(await p.run(fetch, 2, "b"), bytes)
        assert_type(await p.run(nothing), None)
        async for n in p.map(parse, [b"a", b"bb"]):
            assert_type(n, int)
        async for raw in p.map(fetch_m, range(2)):
            assert_type(raw, bytes)
        async for m in p.map(parse, agen(), ordered=False):
            assert_type(m, int)


async def _wrong_calls(p: WorkerPool) -> None:
    """Never run: each line is a type error (see the module docstring)."""
    p.submit_nowait(fetch, "1", "a")  # type: ignore[arg-type, call-arg]
    p.submit_nowait(fetch, 1)  # type: ignore[arg-type]
    p.submit_nowait(fetch, 1, "a", 3)  # type: ignore[arg-type, call-arg]
    await p.submit(parse, 1)  # type: ignore[arg-type]
    await p.run(parse)  # type: ignore[arg-type, call-arg]
    wrong: str = await p.run(parse, b"1")  # type: ignore[arg-type]
    p.map(parse, [1, 2])  # type: ignore[arg-type]
    p.map(fetch, [1])  # type: ignore[arg-type]
    del wrong
