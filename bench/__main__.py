"""``python -m bench [--quick]``: the command, scale, worker-pool, TLS, rate-limiter, retry,
ASGI, httpx and shared-store benchmarks.

Each benchmark runs in a fresh interpreter of its own, as pyperf does: what one leaves behind
(live objects, a fragmented heap, idle threads) must not tilt the next one's ratios. Within one
benchmark, ours and the peers still share a process and interleave. Arguments (``--quick``)
reach every benchmark.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "commands_bench",
    "scale_bench",
    "pool_bench",
    "tls_bench",
    "limiter_bench",
    "retry_bench",
    "asgi_bench",
    "httpx_bench",
    "store_bench",  # skips itself without redis-server
)


def main() -> None:
    """Run every benchmark in turn, each in its own process; exit non-zero if one failed."""
    failed: list[str] = []
    for i, name in enumerate(BENCHMARKS):
        if i:
            print(flush=True)
        done = subprocess.run([sys.executable, "-m", f"bench.{name}", *sys.argv[1:]], check=False)
        if done.returncode:
            failed.append(f"{name} (exit code {done.returncode})")
    if failed:
        print(f"\nbenchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
