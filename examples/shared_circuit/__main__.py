"""``python -m examples.shared_circuit [--url redis://host:port/db]`` (see the package doc)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from examples.shared_circuit.worker import run

HOW = "apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"


def start_redis(binary: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of our own on a free loopback port, answering PING."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("redis-server did not start")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.shared_circuit",
                                     description=__doc__)
    parser.add_argument("--url", help="use this Redis server instead of starting one")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            print(f"redis-server not found: {HOW}, or pass --url redis://host:port/db")
            return 0
        server, url = start_redis(binary)
        print(f"started redis-server at {url}")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(3)
    healthy = ctx.Value("b", False)
    out = ctx.Queue()
    procs = [ctx.Process(target=run, args=(name, url, ready, healthy, out)) for name in "AB"]
    try:
        for p in procs:
            p.start()
        ready.wait(timeout=60)
        print("the dependency is down; A calls it, B waits 0.5 s before calling")
        time.sleep(0.6)
        healthy.value = True
        print("the dependency is back (while the circuit is open)")
        reports = dict(out.get(timeout=60) for _ in procs)
        for name in "AB":
            print(f"\nprocess {name} saw:")
            for line in reports[name]:
                print("  " + line)
    finally:
        for p in procs:
            p.join(timeout=10)
        if server is not None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
