"""Every ```python block of ``docs/*.md`` and ``README.md`` is executed, so the docs cannot rot.

The convention, for every doc author:

- The ```python blocks of one file run in order in one shared namespace, in a fresh
  interpreter per file (so the default command registry and prometheus-client's default
  registry belong to that file alone), with a fresh temporary directory as working directory.
  That directory holds throwaway certificates, all issued by ``ca.pem``: ``server.pem`` /
  ``server.key`` (for localhost, 127.0.0.1 and ::1) and ``client.pem`` / ``client.key``
  (client authentication), so TLS examples can use realistic file names.
- Top-level ``await`` is allowed: such a block runs through ``anyio.run``, and a file with any
  such block runs twice, once on asyncio and once on trio. A file without one runs once.
- Show results with ``assert``: a block asserting nothing only proves that it runs.
- ``<!-- not-run: reason -->`` as the last non-blank line before the opening fence skips that
  one block; the reason is required. Keep it rare.
- Text that is not Python to run goes in ```sh, ```console, ```text, ```toml, ... fences.

Run one file by hand: ``python tests/test_docs.py docs/commands.md trio``.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
SKIP = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")
PYTHON_INFOS = {"python", "py", "python3"}
FILE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it starts (1-based line of its first code line)."""

    path: Path
    line: int
    code: str
    skip_reason: str | None

    def compile(self) -> types.CodeType:
        # Pad with newlines so tracebacks point at the real line of the Markdown file.
        source = "\n" * (self.line - 1) + self.code
        code: types.CodeType = compile(
            source, str(self.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        return code

    @property
    def is_async(self) -> bool:
        try:
            return bool(self.compile().co_flags & inspect.CO_COROUTINE)
        except SyntaxError:
            return False  # reported when the file runs


def blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with their skip markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        info = m["info"].strip().split()
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: code fence is never closed")
        if info and info[0].lower() in PYTHON_INFOS:
            prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            skip = SKIP.match(prev)
            reason = skip["reason"].strip() if skip else None
            if skip and not reason:
                raise ValueError(f"{path}:{start}: <!-- not-run: --> needs a reason")
            code = textwrap.dedent("\n".join(lines[start + 1 : i]))
            out.append(Block(path, start + 2, code + "\n", reason))
        i += 1
    return out


def run_file(path: Path, backend: str) -> None:
    """Execute every runnable block of ``path`` in order (the subprocess side)."""
    import anyio

    sys.path.insert(0, str(ROOT))  # the demo's certificates live in examples/demo/
    from examples.demo.certs import write_certificates

    module = types.ModuleType("__docs__")
    module.__file__ = str(path)
    sys.modules["__docs__"] = module  # dataclasses and pickling look the module up
    namespace = module.__dict__
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="resilience-docs-") as tmp:
        os.chdir(tmp)  # never litter the caller's directory
        try:
            write_certificates(Path(tmp))
            for block in blocks(path):
                if block.skip_reason is not None:
                    continue
                code = block.compile()
                if code.co_flags & inspect.CO_COROUTINE:

                    async def run_block(code: types.CodeType = code) -> None:
                        await eval(code, namespace)

                    anyio.run(run_block, backend=backend)
                else:
                    exec(code, namespace)
        finally:
            os.chdir(home)


def doc_files() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _cases() -> list[object]:
    cases: list[object] = []
    for path in doc_files():
        found = [b for b in blocks(path) if b.skip_reason is None]
        if not found:
            continue
        backends = ["asyncio", "trio"] if any(b.is_async for b in found) else ["sync"]
        rel = path.relative_to(ROOT)
        cases += [pytest.param(path, b, id=f"{rel}-{b}") for b in backends]
    return cases


def _run(path: Path, backend: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, __file__, str(path), "asyncio" if backend == "sync" else backend],
        cwd=cwd, capture_output=True, text=True, timeout=FILE_TIMEOUT,
    )


@pytest.mark.parametrize(("path", "backend"), _cases())
def test_doc_code_runs(path: Path, backend: str, tmp_path: Path) -> None:
    proc = _run(path, backend, tmp_path)
    assert proc.returncode == 0, f"{path} on {backend}:\n{proc.stdout}\n{proc.stderr}"


def test_the_docs_have_code_to_run() -> None:
    runnable = [b for p in doc_files() for b in blocks(p) if b.skip_reason is None]
    files = {b.path.name for b in runnable}
    assert {"index.md", "commands.md", "testing.md"} <= files, files
    assert any(b.is_async for b in runnable)


# -- the harness itself must be able to fail ----------------------------------------------------


def test_a_failing_block_fails_and_names_its_line(tmp_path: Path) -> None:
    md = tmp_path / "broken.md"
    md.write_text(
        "# t\n\n```python\nimport anyio\nx = 1\n```\n\ntext\n\n```python\nawait anyio.sleep(0)\n"
        "assert x == 2, 'wrong x'\n```\n"
    )
    proc = _run(md, "trio", tmp_path)
    assert proc.returncode != 0
    assert f'File "{md}", line 12' in proc.stderr and "wrong x" in proc.stderr


def test_blocks_share_a_namespace_and_run_top_level_await(tmp_path: Path) -> None:
    md = tmp_path / "ok.md"
    md.write_text(
        "```python\nimport anyio\nseen = []\n```\n"
        "```python\nawait anyio.sleep(0)\nseen.append(anyio.get_current_task().name)\n```\n"
        "```sh\nnot python at all\n```\n"
        "<!-- not-run: needs a remote host -->\n\n```python\nraise SystemExit(3)\n```\n"
        "```py\nassert len(seen) == 1\nimport os\nassert {'ca.pem', 'server.pem', 'server.key',"
        " 'client.pem', 'client.key'} <= set(os.listdir())\n```\n"
    )
    found = blocks(md)
    assert [b.line for b in found] == [2, 6, 15, 18]
    assert [b.is_async for b in found] == [False, True, False, False]
    assert found[2].skip_reason == "needs a remote host"
    proc = _run(md, "asyncio", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob("*.pem")), "the runner must not write into the caller's cwd"


def test_marker_without_reason_and_unclosed_fence_are_errors(tmp_path: Path) -> None:
    md = tmp_path / "bad.md"
    md.write_text("<!-- not-run: -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        blocks(md)
    md.write_text("```python\npass\n")
    with pytest.raises(ValueError, match=r"bad.md:1: code fence is never closed"):
        blocks(md)


if __name__ == "__main__":
    run_file(Path(sys.argv[1]).resolve(), sys.argv[2] if len(sys.argv) > 2 else "asyncio")
