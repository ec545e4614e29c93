"""Smoke tests of everything a newcomer runs: every ``examples/*.py`` and ``make demo``
(``examples/demo/``).

Each runs as a real subprocess (as a user would run it) with a timeout; we check the exit
status and the lines that tell its story. The demo also gets a Ctrl-C test on a terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 60.0

# Lines each example must print (regular expressions), and the backends it takes as argv[1].
# An example not listed here (written elsewhere) must still exit 0 and print something.
EXPECTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hello_command.py": (
        (
            r"round 1: 40 concurrent calls",
            r"fallbacks: \{'CommandTimeoutError': [1-9]\d*, 'ConnectionError': [1-9]\d*\}",
            r"round 2: 10 concurrent calls\n  results:   0 from hello\(\), 10 from the fallback"
            r"\n  fallbacks: \{'CircuitOpenError': 10\}\n  circuit:   open",
        ),
        ("asyncio", "trio"),
    ),
    "worker_pool.py": (
        (
            r"map:    \[0, 1, 4, 9, 16\]",
            r"submit: \[0, 1, 4, 9, 16\]",
            r"failed job: job 5 failed",
            r"run:    \d+",
            r"pool closed",
        ),
        ("asyncio", "trio"),
    ),
    "sync_service.py": (
        (
            r"apple: 3 in stock\npear: 0 in stock\nslow: CommandTimeoutError",
            r"in flight: 1 ",
            r"pear: MaxConcurrencyError",
            r"in flight: 0",
            r"flaky: ConnectionError: database connection reset\n"
            r"flaky: CircuitOpenError",
            r"circuit: open\napple: 3 in stock\ncircuit: closed",
            r"run_sync: 3",
        ),
        ("",),
    ),
}


def _example_cases() -> list[object]:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    names = sorted(scripts | set(EXPECTED))
    cases: list[object] = []
    for name in names:
        backends = EXPECTED.get(name, ((), ("",)))[1]
        cases += [pytest.param(name, b, id=f"{name}-{b}" if b else name) for b in backends]
    return cases


@pytest.mark.parametrize(("name", "backend"), _example_cases())
def test_example_runs(name: str, backend: str) -> None:
    path = EXAMPLES / name
    assert path.exists(), f"{path} is missing"
    proc = subprocess.run(
        [sys.executable, str(path), *([backend] if backend else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{name} printed nothing"
    for pattern in EXPECTED.get(name, ((), ()))[0]:
        assert re.search(pattern, proc.stdout), f"{name}: no {pattern!r} in:\n{proc.stdout}"


# -- the demo -----------------------------------------------------------------------------------

# What `make demo` runs, from the repository's root (examples/demo/ is not installed).
DEMO = [sys.executable, "-m", "examples.demo"]


def test_demo_tells_its_story_on_both_backends() -> None:
    """A short demo per backend (run side by side to keep the suite fast): every check OK."""
    procs = {
        backend: subprocess.Popen(
            [*DEMO, "--duration", "8", "--backend", backend],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for backend in ("asyncio", "trio")
    }
    for backend, proc in procs.items():
        out, err = proc.communicate(timeout=TIMEOUT)
        report = f"{backend}: exit {proc.returncode}\n{out}\n{err}"
        assert proc.returncode == 0, report
        assert f"resilience demo on {backend}" in out, report
        assert re.search(r"curl -s http://127\.0\.0\.1:\d+/metrics", out), report
        assert re.search(r"upstream: closed .* calls/s .* p99", out), report  # plain lines
        assert "\x1b[" not in out, "ANSI escapes in plain (non-terminal) output"
        checks = re.findall(r"^  (OK  |FAIL)  (.*)$", out, re.MULTILINE)
        assert len(checks) == 7 and all(ok == "OK  " for ok, _ in checks), report
        assert "retries absorbed errors while degraded" in out, report
        assert "all checks passed" in out, report
        assert "the circuit opened during the outage" in out
        assert "the circuit closed again after recovery" in out


def test_demo_rejects_bad_options_clearly() -> None:
    proc = subprocess.run(
        [*DEMO, "--duration", "1"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 2
    assert "--duration must be >= 4 seconds (finite), got 1.0" in proc.stderr


def _read_until(fd: int, pattern: bytes, deadline: float, buf: bytearray) -> bool:
    while time.monotonic() < deadline:
        if pattern in buf:
            return True
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return pattern in buf
            if not chunk:
                return pattern in buf
            buf += chunk
    return pattern in buf


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_ctrl_c_exits_cleanly_on_a_terminal(backend: str) -> None:
    """Live (ANSI) view on a pseudo-terminal; SIGINT mid-run: exit 130, cursor restored."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*DEMO, "--duration", "30", "--backend", backend],
        cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE, start_new_session=True,
    )
    os.close(slave)
    out = bytearray()
    try:
        # The second frame proves the view redraws in place (cursor moved up, not scrolled).
        assert _read_until(master, b"\x1b[?25l", time.monotonic() + 20, out), bytes(out)
        assert _read_until(master, b"F\x1b[2K", time.monotonic() + 20, out), bytes(out)
        assert b"COMMAND" in out and b"upstream" in out
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        rc = proc.wait(timeout=15)
        elapsed = time.monotonic() - sent
        _read_until(master, b"no verdict", time.monotonic() + 2, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    text = out.decode(errors="replace")
    assert rc == 130, f"exit {rc}\n{text}\n{err}"
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert "Traceback" not in err and "Traceback" not in text, err
    assert text.rstrip().endswith("interrupted: no verdict"), text[-500:]
    assert text.rfind("\x1b[?25h") > text.rfind("\x1b[?25l"), "cursor left hidden"
