"""``python -m examples.rpc`` (``examples/rpc/``): three nodes calling each other over JSON-RPC.

The smoke test runs ``python -m examples.rpc --quick`` (three node processes on loopback,
mutual TLS, one killed, one slowed, both restored: about 10 s) on each backend and checks the
exit status and the OK lines. The other tests pin down the parts the verdict rests on: the
JSON-RPC layer (which ``examples/cluster`` shares), how a caller names what it saw, and that
a run whose story did not happen cannot pass its own checks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from _tools import run_story

from resilience import Registry
from resilience.httpx import AsyncCommandTransport

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's examples/

from examples.rpc.checks import Measured, checks, table
from examples.rpc.jsonrpc import JsonRpc, Peer, RpcError, RpcUnavailable, call
from examples.rpc.node import ADD, MULTIPLY, classify
from examples.rpc.tally import Tally

TIMEOUT = 120.0

#: The lines the story must print (each check says what it measured).
EXPECTED_OK = (
    "OK    steady: every node called both methods of both peers",
    "OK    killed C: A and B opened their circuit for C and then failed fast",
    "OK    slowed B: A timed out",
    "OK    slowed B protected itself: its LoadShedding shed",
    "OK    no errors where a fallback exists: during the outage all",
    "OK    recovery: after C restarted on its port and B sped up, calls succeed again",
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_example_tells_its_story(backend: str) -> None:
    out = run_story("examples.rpc", backend, EXPECTED_OK, TIMEOUT)
    for phase in ("steady:", "kill-C:", "slow-B:", "restore:"):
        assert f"\n{phase} " in out, out
    assert "A: circuit for C closed -> open" in out
    assert "B: circuit for C closed -> open" in out


def test_nothing_measured_fails_every_check() -> None:
    results = checks(Measured())
    assert len(results) == 6
    assert not any(ok for ok, _ in results), results


def _window(**seen: dict[str, Any]) -> dict[str, Any]:
    return {"A": {"circuits": {"B": "open"}, "seen": {"B": seen},
                  "served": {"success": 3.0, "rejected": 2.0, "timeout": 1.0}}}


def test_the_table_tells_fallbacks_from_errors() -> None:
    tally = Tally()
    tally.record("B", ADD, "refused", fell_back=False, seconds=0.002)
    tally.record("B", ADD, "open", fell_back=False, seconds=0.0004, retry_after=0.5)
    tally.record("B", MULTIPLY, "open", fell_back=True, seconds=0.0003, retry_after=0.25)
    tally.record("B", MULTIPLY, "ok", fell_back=False, seconds=0.003)
    tally.retried("B", ADD, "refused")
    window = tally.window(reset=True)
    assert tally.window(reset=False) == {}
    add, mult = window["B"][ADD], window["B"][MULTIPLY]
    assert (add["calls"], add["errors"], add["fallback"], add["last"]) == (2, 2, 0, "open")
    assert (mult["calls"], mult["ok"], mult["fallback"], mult["errors"]) == (2, 1, 1, 0)
    assert add["retry_after"] == [0.5, 0.5] and add["retried"] == {"refused": 1}
    header, row, served = table(_window(**window["B"]))
    assert row.split()[:8] == ["A", "->", "B", "4", "1", "1", "2", "2"]
    assert "0.25-0.50 s" in row and "1 refused" in row and row.endswith("open")
    assert served.endswith("A 3 ok, 2 shed (503), 1 cut off (504)")


async def test_classify_names_what_the_transport_raised() -> None:
    registry = Registry()
    registry.configure_command("http:open.example", force_open=True)

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.example":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "busy.example":
            return httpx.Response(503, headers={"retry-after": "1"})
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1,
                                         "error": {"code": -32601, "message": "no"}})

    transport = AsyncCommandTransport(httpx.MockTransport(upstream), registry=registry,
                                      retry_methods=("POST",))
    seen = []
    async with httpx.AsyncClient(transport=transport) as client:
        for host in ("open.example", "down.example", "busy.example", "no.example"):
            try:
                await call(client, f"https://{host}/rpc", ADD, {"a": 1, "b": 2})
            except Exception as exc:
                seen.append(classify(exc))
    assert seen == [("open", None), ("refused", None), ("503", 1.0), ("rpc", None)]


async def test_json_rpc_dispatches_by_path_and_certificate_name() -> None:
    async def add(params: dict[str, Any], peer: Peer) -> Any:
        if "a" not in params:
            raise RpcError(-32602, "expected a and b")
        return params["a"] + params["b"]

    app = JsonRpc({"/rpc": {ADD: (add, ("node-",))}})

    def as_peer(name: str) -> Any:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {"tls": {"client_cert_name": name, "client_cert_serial": 7}}
            await app(scope, receive, send)
        return wrapped

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=as_peer("node-A")),
                                 base_url="https://test") as client:
        assert await call(client, "/rpc", ADD, {"a": 2, "b": 3}) == 5
        with pytest.raises(RpcError) as info:
            await call(client, "/rpc", "Arith.Divide", {})
        assert info.value.code == -32601
        with pytest.raises(RpcError) as info:
            await call(client, "/rpc", ADD, {})
        assert info.value.code == -32602
        with pytest.raises(RpcUnavailable) as unavailable:
            await call(client, "/elsewhere", ADD, {"a": 1, "b": 1})
        assert unavailable.value.status == 404
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=as_peer("operator")),
                                 base_url="https://test") as client:
        with pytest.raises(RpcError) as info:
            await call(client, "/rpc", ADD, {"a": 2, "b": 3})
        assert info.value.code == -32001 and "may not call" in str(info.value)
