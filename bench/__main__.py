"""``python -m bench [--quick]``: the command, scale, worker-pool, TLS and rate-limiter
benchmarks."""

from __future__ import annotations

import importlib


def main() -> None:
    """Run every benchmark in turn; arguments (``--quick``) reach each through ``sys.argv``."""
    from bench import commands_bench

    commands_bench.main()
    print()
    importlib.import_module("bench.scale_bench").main()
    try:
        pool_bench = importlib.import_module("bench.pool_bench")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.pool_bench":
            raise
        print("\n(bench.pool_bench does not exist yet: worker-pool benchmark skipped)")
        return
    print()
    pool_bench.main()
    print()
    importlib.import_module("bench.tls_bench").main()
    print()
    importlib.import_module("bench.limiter_bench").main()
    print()
    importlib.import_module("bench.retry_bench").main()
    print()
    importlib.import_module("bench.asgi_bench").main()
    print()
    importlib.import_module("bench.httpx_bench").main()
    print()
    importlib.import_module("bench.store_bench").main()  # skips itself without redis-server


if __name__ == "__main__":
    main()
