"""The benchmark's resilience cases still run against the current API (not a timing test).

``make bench`` is not part of ``make test`` (it takes minutes and needs the peer libraries),
so these run each of our own cases once, small, with the one-time checks its setup makes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench/

from bench import asgi_bench, commands_bench, limiter_bench, pool_bench, retry_bench
from bench._harness import AsyncCase, Result, Settings, SyncCase


@pytest.mark.parametrize(
    "case", commands_bench._resilience_async_cases(), ids=lambda case: case.name
)
async def test_command_cases_check_and_run(case: AsyncCase) -> None:
    loop = await case.setup()
    await loop(50)


@pytest.mark.parametrize(
    "case", commands_bench._scale_async_cases(names=30), ids=lambda case: case.name
)
async def test_command_scale_cases_check_and_run(case: AsyncCase) -> None:
    loop = await case.setup()  # (30 names, not 10,000: the same code, cheaply)
    await loop(50)


@pytest.mark.parametrize("case", commands_bench._scale_sync_cases(), ids=lambda case: case.name)
def test_statistics_scale_cases_check_and_run(case: SyncCase) -> None:
    case.setup()(20)


def test_targets_cover_every_case_and_judge() -> None:
    """Every target names measured rows; fake results give one verdict per target."""
    rows = {key for section in commands_bench._sections() for key in section.rows}
    fake: dict[tuple[str, str], Result | str] = {
        key: Result(key[1], key[0], 1000.0, 900.0, 1100.0, 1) for key in rows
    }
    targets = commands_bench._target_list(fake)
    assert {key for t in targets for key in (t.case, t.ref)} <= rows
    assert {v for v, *_ in commands_bench._targets(fake)} <= {"PASS", "MISS"}


@pytest.mark.parametrize(("timeout", "via_run"), [(1.0, False), (None, False), (1.0, True)])
def test_sync_command_cases_check_and_run(timeout: float | None, via_run: bool) -> None:
    commands_bench._sync_decorated(timeout, via_run)()(20)


@pytest.mark.parametrize(
    "case",
    [
        pool_bench.pool_map(pool_bench.trivial, pool_bench.WORKERS),
        pool_bench.pool_map(pool_bench.nap, pool_bench.SLEEP_WORKERS),
        pool_bench.pool_submit_all,
        pool_bench.pool_round_trip,
        pool_bench.streams_naive,
        pool_bench.streams_nowait(pool_bench.nap, pool_bench.SLEEP_WORKERS),
    ],
    ids=["map", "map-sleep", "submit-all", "round-trip", "streams", "streams-nowait"],
)
async def test_pool_cases_run(case: pool_bench.Case) -> None:
    with anyio.fail_after(30):
        await case(300)


def test_pool_memory_child_reports_a_number() -> None:
    assert pool_bench.memory_peak("asyncio", 2_000) >= 0.0


@pytest.mark.parametrize("case", asgi_bench.direct_cases(), ids=lambda case: case.name)
async def test_asgi_direct_cases_run(case: AsyncCase) -> None:
    loop = await case.setup()
    await loop(50)


def test_asgi_servers_serve_one_short_round() -> None:
    """Both hypercorn children start, answer 200 through httpx and report their CPU (~1 s)."""
    servers = {name: asgi_bench.Server(name, "asyncio") for name in asgi_bench.VARIANTS}
    try:
        results = anyio.run(asgi_bench.measure, servers, 1, 0.05, 2)
    finally:
        for server in servers.values():
            server.close()
    assert set(results) == set(asgi_bench.VARIANTS)
    assert all(f.rps > 0 and f.cpu_us > 0 for f in results.values())


@pytest.mark.parametrize("case", limiter_bench._resilience_cases(), ids=lambda case: case.name)
async def test_limiter_cases_check_and_run(case: AsyncCase) -> None:
    loop = await case.setup()
    await loop(50)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiolimiter runs on asyncio only
@pytest.mark.parametrize("case", limiter_bench._aiolimiter_cases(), ids=lambda case: case.name)
async def test_limiter_peer_cases_check_and_run(case: AsyncCase) -> None:
    loop = await case.setup()
    await loop(50)


async def test_limiter_waiting_runs_and_is_judged() -> None:
    """The waiting section, small (64 permits at 20,000/s: a few ms), and one verdict per
    target from fake results."""
    with anyio.fail_after(30):
        rates = await limiter_bench.measure_waiting(
            {"resilience (asyncio)": limiter_bench._ours_waiting}, 64, 1)
    assert all(isinstance(r, limiter_bench.Rates) and r.permits_s > 0 for r in rates.values())
    rows = [key for pair in limiter_bench.PAIRS for key in pair]
    fake: dict[tuple[str, str], Result | str] = {
        ("asyncio", n): Result(n, "asyncio", 1000.0, 900.0, 1100.0, 1) for n in rows
    }
    waiting = {"resilience (asyncio)": limiter_bench.Rates(2.0, 1.0),
               "aiolimiter": limiter_bench.Rates(1.0, 2.0)}
    verdicts = limiter_bench._targets(fake, waiting)
    assert len(verdicts) == len(limiter_bench.PAIRS) + 2
    assert {v for v, *_ in verdicts} <= {"PASS", "MISS"}


@pytest.mark.parametrize("case", retry_bench.success_cases(), ids=lambda case: case.name)
async def test_retry_success_cases_check_and_run(case: AsyncCase) -> None:
    loop = await case.setup()
    await loop(8)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # tenacity/stamina: asyncio here
@pytest.mark.parametrize("case", retry_bench.flaky_cases(), ids=lambda case: case.name)
async def test_retry_flaky_cases_check_and_run(case: AsyncCase) -> None:
    loop = await case.setup()
    await loop(8)


@pytest.mark.parametrize("case", retry_bench.flaky_sync_cases(), ids=lambda case: case.name)
def test_retry_sync_cases_check_and_run(case: SyncCase) -> None:
    case.setup()(8)


def test_retry_targets_are_judged() -> None:
    results = retry_bench.measure(Settings(repeats=1, target_s=0.001))
    verdicts = retry_bench.targets(results)
    assert len(verdicts) == 6
    assert all(v in ("PASS", "MISS") for v, _, _ in verdicts), verdicts


async def test_httpx_direct_cases_run() -> None:
    from bench import httpx_bench

    for case in httpx_bench.direct_cases():
        loop = await case.setup()
        await loop(50)


def test_httpx_bench_serves_one_short_round() -> None:
    """The raw server child answers, and every loopback case checks and runs (< 1 s)."""
    from bench import httpx_bench

    server = httpx_bench.Server()
    try:
        results = anyio.run(httpx_bench.measure, server.url, 3, 8)
    finally:
        server.close()
    assert set(results) == {httpx_bench.BARE, httpx_bench.NO_TIMEOUT, httpx_bench.COMMAND}
    assert all(r.us > 0 and r.ratio > 0 for r in results.values()), results
