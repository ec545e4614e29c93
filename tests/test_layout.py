"""The package's shape: no import circles (lazy imports included), small modules, one seam.

A newcomer should be able to change one concept without holding the rest in their head:
every module imports only modules "below" it, and only ``_backend`` probes the event loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resilience

PACKAGE = Path(resilience.__file__).parent


def _dotted(path: Path) -> str:
    """``_circuit``, ``httpx`` (a subpackage's ``__init__``), ``httpx._transport``..."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "__init__"


MODULES = {_dotted(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Package modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else (
        name.split(".")[:-1]
    )
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("resilience."):
                    found.add(alias.name.removeprefix("resilience."))
    return found & set(MODULES)


def test_no_import_circles() -> None:
    assert "httpx._transport" in MODULES  # subpackages are read too
    graph = {name: _imports(name, path) - {name} for name, path in MODULES.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_modules_stay_small() -> None:
    sizes = {name: len(p.read_text().splitlines()) for name, p in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > 550} == {}


def test_only_the_backend_seam_probes_event_loops() -> None:
    for name, path in MODULES.items():
        text = path.read_text()
        assert "sniffio" not in text.replace("no sniffio", "").replace("``sniffio``", ""), name
        if name != "_backend":
            assert "_get_running_loop" not in text, name
            assert "import trio" not in text, name
