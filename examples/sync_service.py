"""The same decorator on plain blocking code: no async anywhere in sight.

A plain ``def`` stays a plain function. Each call runs in a worker thread so its timeout
holds; a thread that outlives its timeout keeps its concurrency slot until it really returns,
so ``max_concurrent_requests`` bounds real work, not just waiting callers.

Run: ``python examples/sync_service.py`` (about a second).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import resilience
from resilience import CircuitOpenError, CommandTimeoutError, MaxConcurrencyError, command

STOCK = {"apple": 3, "pear": 0}


@command(
    "inventory",
    timeout=0.2,
    max_concurrent_requests=2,
    request_volume_threshold=6,
    error_percent_threshold=50,
    sleep_window=0.3,
)
def stock_level(item: str) -> int:
    """A blocking lookup (think: a legacy database driver)."""
    if item == "slow":
        time.sleep(0.5)  # past the timeout
    elif item == "flaky":
        raise ConnectionError("database connection reset")
    else:
        time.sleep(0.05)
    return STOCK.get(item, 0)


def attempt(item: str) -> str:
    try:
        return f"{item}: {stock_level(item)} in stock"
    except (CommandTimeoutError, MaxConcurrencyError, CircuitOpenError) as exc:
        return f"{item}: {type(exc).__name__}: {exc}"
    except ConnectionError as exc:  # your own exception, unchanged
        return f"{item}: ConnectionError: {exc}"


def main() -> None:
    circuit = resilience.get_circuit("inventory")
    print(attempt("apple"))
    print(attempt("pear"))
    print(attempt("slow"))  # times out after 0.2 s; its thread still holds a slot
    print("in flight:", circuit.in_flight, "(the timed-out thread is still working)")
    with ThreadPoolExecutor(max_workers=2) as threads:  # 1 slot left: one of two is rejected
        for line in threads.map(attempt, ["apple", "pear"]):
            print(line)
    time.sleep(0.4)  # the slow thread returns, and its slot with it
    print("in flight:", circuit.in_flight)
    for _ in range(3):
        print(attempt("flaky"))  # errors pile up in the rolling window until the circuit opens
    print(attempt("apple"))  # open: fails fast, stock_level() is not called
    print("circuit:", circuit.state.value)
    time.sleep(0.35)  # sleep window over: one trial call, it succeeds, the circuit closes
    print(attempt("apple"))
    print("circuit:", circuit.state.value)
    # Any blocking function can go through a command without being decorated:
    print("run_sync:", resilience.run_sync("inventory", STOCK.get, "apple"))


if __name__ == "__main__":
    main()
