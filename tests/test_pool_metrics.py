"""Pool metrics after known workloads (both backends)."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from resilience import WorkerPool
from resilience._exporter import DURATION_BUCKETS, Histogram


def sample(registry: CollectorRegistry, name: str, pool: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"pool": pool, **labels})


async def echo(x: int) -> int:
    return x


async def fail() -> None:
    raise RuntimeError("expected")


async def test_counters_and_histograms_after_a_known_workload(
    metrics_registry: CollectorRegistry,
) -> None:
    release = anyio.Event()

    async def gated() -> None:
        await release.wait()

    async with WorkerPool(1, 10, "known", metrics_registry=metrics_registry) as p:
        for i in range(5):
            assert await p.run(echo, i) == i
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await p.run(fail)
        blocker = p.submit_nowait(gated)
        doomed = [p.submit_nowait(echo, i) for i in range(3)]
        await anyio.wait_all_tasks_blocked()
        assert sample(metrics_registry, "resilience_pool_queue_depth", "known") == 3
        assert sample(metrics_registry, "resilience_pool_workers_busy", "known") == 1
        for h in doomed:
            assert h.cancel()
        assert sample(metrics_registry, "resilience_pool_queue_depth", "known") == 0
        release.set()
        await blocker
    jobs = "resilience_pool_jobs_total"
    assert sample(metrics_registry, jobs, "known", outcome="success") == 6
    assert sample(metrics_registry, jobs, "known", outcome="failure") == 2
    assert sample(metrics_registry, jobs, "known", outcome="cancelled") == 3
    # duration and queue wait are observed for every job a worker ran
    assert sample(metrics_registry, "resilience_pool_job_duration_seconds_count", "known") == 8
    assert sample(metrics_registry, "resilience_pool_queue_wait_seconds_count", "known") == 8
    assert sample(metrics_registry, "resilience_pool_workers_busy", "known") == 0


async def test_counters_continue_across_pools_of_the_same_name(
    metrics_registry: CollectorRegistry,
) -> None:
    for expected in (3, 6):
        async with WorkerPool(2, 2, "again", metrics_registry=metrics_registry) as p:
            assert [r async for r in p.map(echo, range(3))] == [0, 1, 2]
        value = sample(metrics_registry, "resilience_pool_jobs_total", "again", outcome="success")
        assert value == expected
    text = generate_latest(metrics_registry).decode()
    for name in (
        "resilience_pool_jobs_total",
        "resilience_pool_queue_depth",
        "resilience_pool_workers_busy",
        "resilience_pool_job_duration_seconds_bucket",
        "resilience_pool_queue_wait_seconds_bucket",
    ):
        assert f'{name}{{' in text and 'pool="again"' in text


async def test_queue_wait_measures_time_spent_queued(metrics_registry: CollectorRegistry) -> None:
    async def hold() -> None:
        await anyio.sleep(0.05)  # the real delay is what is measured here

    async with WorkerPool(1, 1, "waits", metrics_registry=metrics_registry) as p:
        await anyio.wait_all_tasks_blocked()
        first = p.submit_nowait(hold)  # an idle worker takes it: waits ~0
        second = p.submit_nowait(echo, 1)  # queued behind ~50 ms of work
        await first
        await second
    total = sample(metrics_registry, "resilience_pool_queue_wait_seconds_sum", "waits")
    assert total is not None and 0.04 <= total < 5
    fast = sample(
        metrics_registry, "resilience_pool_queue_wait_seconds_bucket", "waits", le="0.005"
    )
    assert fast == 1  # the first job did not wait
    duration = sample(metrics_registry, "resilience_pool_job_duration_seconds_sum", "waits")
    assert duration is not None and duration >= 0.04


async def test_dropped_and_cancelled_jobs_on_error_exit_count_as_cancelled(
    metrics_registry: CollectorRegistry,
) -> None:
    with pytest.raises(LookupError):
        async with WorkerPool(2, 5, "dropped", metrics_registry=metrics_registry) as p:
            for _ in range(7):
                p.submit_nowait(anyio.sleep_forever)
            await anyio.wait_all_tasks_blocked()
            raise LookupError
    jobs = "resilience_pool_jobs_total"
    assert sample(metrics_registry, jobs, "dropped", outcome="cancelled") == 7
    assert sample(metrics_registry, jobs, "dropped", outcome="success") == 0
    assert sample(metrics_registry, "resilience_pool_workers_busy", "dropped") == 0
    assert sample(metrics_registry, "resilience_pool_queue_depth", "dropped") == 0


# -- batched histogram recording (what the workers use) ------------------------------------

_values = st.lists(
    st.one_of(
        st.sampled_from([0.0, *DURATION_BUCKETS, 11.0]),  # exactly on a bound, and beyond
        st.floats(min_value=0.0, max_value=20.0, allow_nan=False),
    ),
    max_size=300,
)


@given(batches=st.lists(_values, max_size=5))
def test_folding_pending_values_equals_observing_them_one_by_one(
    batches: list[list[float]],
) -> None:
    observed, folded = Histogram(), Histogram()
    for batch in batches:
        for value in batch:
            observed.observe(value)
        folded.pending.extend(batch)
        folded.fold()
    assert folded.counts == observed.counts
    assert folded.sum == pytest.approx(observed.sum)
    assert folded.pending == []


def test_a_value_appended_while_a_fold_runs_is_kept_for_the_next_one() -> None:
    class RacyList(list[float]):
        """A pending list where another thread appends right after the fold's copy."""

        def __getitem__(self, index):  # type: ignore[no-untyped-def]
            out = super().__getitem__(index)
            if isinstance(index, slice):
                self.append(0.2)
            return out

    hist = Histogram()
    hist.pending = RacyList([0.001, 0.001])
    hist.fold()
    assert hist.pending == [0.2]  # not lost: folded next time
    assert sum(hist.counts) == 2
    hist.pending = []
    hist.pending.append(0.2)
    hist.fold()
    assert sum(hist.counts) == 3
