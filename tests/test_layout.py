"""The package's shape: no import circles (lazy imports included), small modules, one seam.

A newcomer should be able to change one concept without holding the rest in their head:
every module imports only modules "below" it, and only ``_backend`` probes the event loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resilience

PACKAGE = Path(resilience.__file__).parent
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}


def _imports(path: Path) -> set[str]:
    """Sibling modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("resilience."):
                    found.add(alias.name.split(".")[1])
    return found & set(MODULES)


def test_no_import_circles() -> None:
    graph = {name: _imports(path) - {name} for name, path in MODULES.items()}
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
