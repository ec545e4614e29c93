"""The backends async tests run on, and the uvloop opt-in a module can use (``conftest.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from conftest import backend_id, backends_with_uvloop, make_anyio_backend

from resilience import Registry

# This module's async tests run on asyncio, trio and asyncio+uvloop.
anyio_backend = make_anyio_backend(backends_with_uvloop)


async def test_each_backend_runs_a_command(
    anyio_backend_name: str, anyio_backend_options: dict[str, Any], reg: Registry
) -> None:
    if anyio_backend_name == "asyncio":
        loop = type(asyncio.get_running_loop())
        on_uvloop = loop.__module__.split(".", 1)[0] == "uvloop"
        assert on_uvloop == anyio_backend_options.get("use_uvloop", False), loop
    else:
        import trio

        trio.lowlevel.current_trio_token()  # raises outside trio

    async def slow() -> str:
        await anyio.sleep(10)
        return "never"

    reg.configure_command("slow", timeout=0.01)
    assert await reg.run("slow", slow, fallback=lambda exc: type(exc).__name__) == (
        "CommandTimeoutError"
    )


def test_sync_tests_are_not_parametrized(request: Any) -> None:
    assert "anyio_backend" not in request.fixturenames


def test_backend_ids() -> None:
    assert [backend_id(b) for b in backends_with_uvloop] == ["asyncio", "trio", "asyncio+uvloop"]
