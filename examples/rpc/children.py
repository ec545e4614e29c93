"""What the examples' stories share about their child processes: free ports, reading the
JSON lines a node prints (its ``ready`` event first), stopping a node, stopping the story on
Ctrl-C or SIGTERM, the phases a story is told in, and the work directory it runs in."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "Phase", "free_port", "read_events", "run_in_workdir", "stop", "stop_on_signals", "tail",
]

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


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def run_in_workdir(
    title: str,
    prefix: str,
    out: TextIO,
    story: Callable[[Path], Awaitable[bool | None]],
    *,
    keep: bool = False,
    log_lines: int = 15,
) -> int:
    """Run ``story(tmp)`` in a fresh work directory: the exit code (0 all checks passed, 1
    some failed, 130 interrupted). If the story itself fails, the tails of its nodes' logs
    (``tmp/logs/*.log``) are shown; the directory is removed afterwards unless ``keep``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    out.write(f"{title}; files in {tmp}\n")
    passed: bool | None = False
    try:
        passed = await story(tmp)
    except Exception as exc:
        out.write(f"\nthe story itself failed: {type(exc).__name__}: {exc}\n")
        for log in sorted((tmp / "logs").glob("*.log")):
            text = tail(log, log_lines)
            if text:
                out.write(f"--- {log.name}\n{text}\n")
        raise
    finally:
        if keep:
            out.write(f"kept {tmp}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if passed is None:
        return 130
    return 0 if passed else 1
