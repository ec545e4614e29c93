"""What the examples' stories share about their child processes: reading the JSON lines a
node prints (its ``ready`` event first), and stopping the story on Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any, TextIO

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["read_events", "stop_on_signals"]

Json = dict[str, Any]


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
