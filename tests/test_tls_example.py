"""examples/https_hello.py runs standalone: hypercorn with our context, httpx verifying it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "https_hello.py"


def test_https_hello_example() -> None:
    for backend in ("asyncio", "trio"):
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), "--backend", backend],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "200" in result.stdout and "Hello, HTTPS!" in result.stdout, result.stdout
