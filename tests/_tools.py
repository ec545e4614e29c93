"""External tools some integration tests run (Prometheus, promtool, sslscan, sslyze).

``make tools`` (``scripts/ensure-tools.sh``, part of ``make test``) installs them when it can.
A test that needs one calls :func:`require_tool`: when the tool is missing the test is
skipped with a reason saying how to get it, except under CI (``CI=true``), where a missing
tool fails the test: CI must prove everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

__all__ = ["HOW", "SSLYZE", "in_ci", "require_tool"]

ROOT = Path(__file__).resolve().parent.parent
#: sslyze lives in its own venv (it pins a cryptography that clashes with ours).
SSLYZE = ROOT / ".venv-sslyze" / "bin" / "sslyze"

_PROMETHEUS = (
    "apt-get install --no-install-recommends prometheus (Debian/Ubuntu), brew install prometheus"
    " (macOS) or a release from https://prometheus.io/download/ on PATH; or run `make tools`"
)
#: How to get each tool, by the name passed to :func:`require_tool`.
HOW: dict[str, str] = {
    "prometheus": _PROMETHEUS,
    "promtool": _PROMETHEUS,
    "sslscan": "apt-get install sslscan (Debian/Ubuntu), brew install sslscan (macOS); "
    "or run `make tools`",
    str(SSLYZE): "run `make tools` (sslyze==6.3.1 in its own venv, .venv-sslyze)",
}


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty, ``0``, ``false`` or ``no``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str | Path, how: str | None = None) -> str:
    """The path of the external tool ``name`` (a command on ``PATH``, or a path to one).

    When it is missing the calling test is skipped with ``"<name> not found: <how>"`` (``how``
    defaults to :data:`HOW`'s entry), or fails under CI. Call it at the start of the test,
    outside any task group: a task group wraps the skip in an exception group, which pytest
    reports as a failure.
    """
    __tracebackhide__ = True  # report the skip at the test that needs the tool
    found = shutil.which(str(name))
    if found is not None:
        return found
    label = Path(name).name if isinstance(name, Path) else name
    message = f"{label} not found: {how or HOW.get(str(name), 'run `make tools`')}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(message)


def run_story(module: str, backend: str, expected_ok: Iterable[str], timeout: float) -> str:
    """Run an example story (``python -m <module> --quick``) and return its output, having
    checked what every story must show: exit 0, every expected OK line, no FAIL, and the
    closing "all checks passed"."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--backend", backend],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    for line in expected_ok:
        assert line in out, f"missing {line!r}\n{out}"
    assert "FAIL" not in out
    assert out.rstrip().splitlines()[-1] == "all checks passed"
    return out
