"""The command hot path's TokenLock: mutual exclusion under real thread contention."""

from __future__ import annotations

import threading
import time

import pytest

from resilience._lock import TokenLock


def _section(lock: TokenLock | None, counter: list[int], inside: list[int],
             overlaps: list[int]) -> None:
    for _ in range(2_000):
        if lock is not None:
            try:
                lock.take()
            except IndexError:
                lock.acquire()
        inside[0] += 1
        if inside[0] != 1:
            overlaps[0] += 1
        value = counter[0]
        time.sleep(0)  # drops the GIL mid-section: without the lock, threads interleave here
        counter[0] = value + 1
        inside[0] -= 1
        if lock is not None:
            lock.give(True)


@pytest.mark.parametrize("locked", [True, False])
def test_threads_contending_never_lose_an_update(locked: bool) -> None:
    lock = TokenLock() if locked else None
    counter = [0]
    inside = [0]
    overlaps = [0]

    def work() -> None:
        _section(lock, counter, inside, overlaps)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if lock is None:  # the control: the same code unlocked does race, so the test can fail
        assert overlaps[0] > 0
        assert counter[0] < 8_000
        return
    assert overlaps[0] == 0
    assert counter[0] == 8_000
    assert not lock.locked()


def test_context_manager_and_release_errors() -> None:
    lock = TokenLock()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()
    with pytest.raises(ZeroDivisionError):
        with lock:
            1 / 0  # noqa: B018
    assert not lock.locked()  # given back on the way out of an exception


def test_a_waiter_gets_the_lock_when_the_holder_gives_it_back() -> None:
    lock = TokenLock()
    lock.acquire()
    got = threading.Event()

    def waiter() -> None:
        lock.acquire()
        got.set()
        lock.release()

    t = threading.Thread(target=waiter)
    t.start()
    assert not got.wait(0.05)  # still held: the waiter spins
    lock.release()
    assert got.wait(5)
    t.join()
    assert not lock.locked()
