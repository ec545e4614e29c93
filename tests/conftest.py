"""Every async test runs on asyncio and on trio (anyio's own pytest plugin, auto mode).

A module can widen that to asyncio on uvloop as well (``uvloop`` is in the test extra, except
where it does not build, e.g. Windows) by overriding the ``anyio_backend`` fixture::

    from conftest import backends_with_uvloop, make_anyio_backend

    anyio_backend = make_anyio_backend(backends_with_uvloop)

Its async tests then run as ``[asyncio]``, ``[trio]`` and ``[asyncio+uvloop]``; its sync tests
are untouched. (A ``pytestmark = pytest.mark.parametrize("anyio_backend", ...)`` would also
parametrize the sync tests, which do not take the fixture, and fail to collect them.) One test
can pick its own with ``@pytest.mark.parametrize("anyio_backend", [UVLOOP], ids=backend_id)``.
Without uvloop installed the fixture's uvloop runs are skipped, and fail under CI (``CI=true``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from _tools import in_ci
from prometheus_client import CollectorRegistry
from test_command_helpers import FakeClock, make_registry

import resilience

#: An anyio backend as anyio's plugin takes it: a name, or ``(name, options)``.
Backend = str | tuple[str, dict[str, Any]]

#: asyncio with uvloop's event loop (anyio's ``use_uvloop`` option).
UVLOOP: Backend = ("asyncio", {"use_uvloop": True})
#: What every async test runs on.
backends: list[Backend] = ["asyncio", "trio"]
#: The same plus asyncio on uvloop: pass it to :func:`make_anyio_backend`.
backends_with_uvloop: list[Backend] = [*backends, UVLOOP]


def backend_id(backend: object) -> str:
    """Test ids: ``asyncio``, ``trio``, ``asyncio+uvloop``."""
    if isinstance(backend, tuple):
        name, options = backend
        return "+".join([name, *(k.removeprefix("use_") for k, v in options.items() if v)])
    return str(backend)


def _param(backend: Backend) -> Any:
    """A uvloop backend is skipped (failed under CI) where uvloop is not installed."""
    needs_uvloop = isinstance(backend, tuple) and backend[1].get("use_uvloop", False)
    missing = needs_uvloop and importlib.util.find_spec("uvloop") is None and not in_ci()
    marks = [pytest.mark.skip(reason="uvloop not found: pip install uvloop")] if missing else []
    return pytest.param(backend, id=backend_id(backend), marks=marks)


def make_anyio_backend(choices: Sequence[Backend]) -> Callable[..., Backend]:
    """An ``anyio_backend`` fixture over ``choices``; assign it to ``anyio_backend`` in a
    test module to run that module's async tests on each (see the module docstring)."""

    @pytest.fixture(name="anyio_backend", params=[_param(b) for b in choices])
    def anyio_backend(request: pytest.FixtureRequest) -> Backend:
        backend: Backend = request.param
        return backend

    return anyio_backend


anyio_backend = make_anyio_backend(backends)


@pytest.fixture
def metrics_registry() -> Iterator[CollectorRegistry]:
    """A private prometheus-client registry, so tests never see each other's series."""
    yield CollectorRegistry()


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock for breaker timing (``Registry(clock=...)``)."""
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock, metrics_registry: CollectorRegistry) -> resilience.Registry:
    """An isolated command registry on the fake clock (test modules may override it)."""
    return make_registry(clock, metrics_registry)
