"""A real ASGI server for the tests: hypercorn on a free loopback port, on either backend."""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from hypercorn.config import Config

#: The logger hypercorn's error log goes to (tests read it with ``caplog``).
ERROR_LOG = "resilience.tests.hypercorn"


@asynccontextmanager
async def hypercorn_serving(app: Any, backend: str) -> AsyncIterator[int]:
    """Serve ``app`` with hypercorn on this backend on a free loopback port; yield the port.

    The socket listens before hypercorn starts, so the first request needs no polling.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port: int = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn takes the socket over
    config.accesslog = None
    config.errorlog = logging.getLogger(ERROR_LOG)
    config.graceful_timeout = 2.0
    stop = anyio.Event()
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(serve, app, config, shutdown_trigger=stop.wait))
        try:
            yield port
        finally:
            stop.set()
