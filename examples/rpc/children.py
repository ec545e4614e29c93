"""What the examples' stories share about their child processes: free ports, reading the
JSON lines a node prints (its ``ready`` event first), stopping a node, stopping the story on
Ctrl-C or SIGTERM, and the phases a story is told in."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["Phase", "free_port", "read_events", "stop", "stop_on_signals"]

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of a story: its name, its length (normal and ``--quick``), what happens."""

    name: str
    seconds: float
    quick: float
    what: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def stop(process: Process, grace: float = 3.0) -> None:
    """SIGTERM (a node stops cleanly), then SIGKILL after ``grace`` seconds."""
    if process.returncode is None:
        try:
            process.terminate()
        except ProcessLookupError:
            pass
        with anyio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
        with anyio.CancelScope(shield=True):
            await process.wait()


async def read_events(process: Process, on_event: Callable[[Json], None]) -> None:
    """Hand every JSON line of ``process``'s stdout to ``on_event`` until the stream ends
    (lines that are not JSON are skipped)."""
    assert process.stdout is not None
    lines = BufferedByteReceiveStream(process.stdout)
    while True:
        try:
            line = await lines.receive_until(b"\n", 1 << 20)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                anyio.ClosedResourceError):
            return
        try:
            event: Json = json.loads(line)
        except ValueError:
            continue
        on_event(event)


async def stop_on_signals(
    scope: anyio.CancelScope, out: TextIO, what: str, interrupted: Callable[[], None]
) -> None:
    """Ctrl-C or SIGTERM: note it, say that ``what`` is being stopped, cancel ``scope``."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            interrupted()
            out.write(f"\ninterrupted ({signal.Signals(signum).name}): stopping {what}\n")
            scope.cancel()
            return
