"""Every async test runs on asyncio and on trio (anyio's own pytest plugin, auto mode)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from test_command_helpers import FakeClock, make_registry

import resilience


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
