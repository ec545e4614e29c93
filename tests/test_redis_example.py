"""``python -m examples.shared_circuit``: two real processes sharing one circuit on their own
redis-server (skipped without one, failed under CI=true)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from _redis_server import redis_binary

ROOT = Path(__file__).resolve().parent.parent


def test_the_shared_circuit_example_tells_its_story() -> None:
    redis_binary()
    proc = subprocess.run(
        [sys.executable, "-m", "examples.shared_circuit"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    a, b = out.split("process A saw:")[1].split("process B saw:")
    assert "closed -> open (tripped)" in a and "closed -> open (shared_open)" in b
    # one of them ran the trial (A, most often: its sleep window ends first); the other
    # learned that it succeeded
    assert ("trial_succeeded" in a) != ("trial_succeeded" in b)
    assert ("shared_closed" in a) != ("shared_closed" in b)
    assert "failed 0" in b  # B never met the outage itself
    trials = [int(n) for n in re.findall(r"trials run here (\d+)", out)]
    assert sorted(trials) == [0, 1]  # one trial across both processes
    assert out.count("circuit at the end: closed") == 2
