"""Real scanners against serve_tls on loopback: sslyze (Mozilla profiles) and sslscan.

Each run also scans a deliberately weak server, which must be reported, so the checks are
shown to be able to fail. The tools are installed by ``make tools``
(``scripts/ensure-tools.sh``): without one its tests are skipped (saying how to get it), and
under CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import functools
import re
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from _tools import SSLYZE, require_tool
from anyio.abc import ByteStream
from prometheus_client import CollectorRegistry
from test_tls_certs import CA, make_ca

from resilience.tls import serve_tls, server_context

pytestmark = pytest.mark.slow

@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return make_ca(tmp_path)


def _weak_context(cert: Path, key: Path) -> ssl.SSLContext:
    """What the profiles forbid: TLS 1.0/1.1, CBC and RSA key exchange, every curve."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options &= ~ssl.OP_NO_TLSv1 & ~ssl.OP_NO_TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.load_cert_chain(cert, key)
    return ctx


async def _drain(stream: ByteStream) -> None:
    async for _ in stream:
        pass


@asynccontextmanager
async def _servers(*contexts: ssl.SSLContext) -> AsyncIterator[list[int]]:
    async with anyio.create_task_group() as tg:
        ports = []
        for ctx in contexts:
            ports.append(await tg.start(functools.partial(
                serve_tls, _drain, port=0, ssl_context=ctx, handshake_timeout=5.0,
                metrics_registry=CollectorRegistry(),
            )))
        yield ports
        tg.cancel_scope.cancel()


async def _sslyze(sslyze: str, profile: str, ca: CA, ports: list[int]) -> str:
    cmd = [
        sslyze, f"--mozilla_config={profile}", f"--certinfo_ca_file={ca.path}",
        *(f"localhost:{p}{{127.0.0.1}}" for p in ports),
    ]
    result = await anyio.run_process(cmd, check=False)
    return result.stdout.decode() + result.stderr.decode()


def _verdicts(output: str) -> dict[int, str]:
    """``{port: "OK - Compliant." | "FAILED - Not compliant." ...}`` from sslyze's summary."""
    summary = output.split("COMPLIANCE AGAINST", 1)
    assert len(summary) == 2, output
    return {
        int(m[1]): m[2].strip()
        for m in re.finditer(r"^\s*localhost:(\d+): (.*)$", summary[1], re.MULTILINE)
    }


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_sslyze_intermediate(ca: CA, tmp_path: Path) -> None:
    sslyze = require_tool(SSLYZE)
    cert, key = ca.issue(tmp_path, "server")
    with anyio.fail_after(120):
        async with _servers(server_context(cert, key), _weak_context(cert, key)) as ports:
            output = await _sslyze(sslyze, "intermediate", ca, ports)
    verdicts = _verdicts(output)
    good, weak = ports
    assert verdicts.get(good) == "OK - Compliant.", output
    assert verdicts.get(weak, "").startswith("FAILED"), output
    assert "tls_versions" in output and "ciphers" in output and "tls_curves" in output, output


async def test_sslyze_modern(ca: CA, tmp_path: Path) -> None:
    sslyze = require_tool(SSLYZE)
    cert, key = ca.issue(tmp_path, "server")
    modern = server_context(cert, key, profile="modern")
    intermediate = server_context(cert, key)  # offers TLS 1.2: not modern
    with anyio.fail_after(120):
        async with _servers(modern, intermediate) as ports:
            output = await _sslyze(sslyze, "modern", ca, ports)
    verdicts = _verdicts(output)
    assert verdicts.get(ports[0]) == "OK - Compliant.", output
    assert verdicts.get(ports[1], "").startswith("FAILED"), output


def _sslscan_report(xml: str) -> tuple[dict[str, bool], set[str]]:
    """(enabled per protocol, accepted cipher names) from ``sslscan --xml=-``."""
    start = xml.find("<document")
    assert start >= 0, xml
    root = ET.fromstring(xml[start:])
    protocols = {
        f"{p.get('type')}{p.get('version')}": p.get("enabled") == "1"
        for p in root.iter("protocol")
    }
    ciphers = {
        f"{c.get('sslversion')} {c.get('cipher')}"
        for c in root.iter("cipher") if c.get("status") in ("accepted", "preferred")
    }
    return protocols, ciphers


def _is_aead(cipher: str) -> bool:
    version, name = cipher.split(" ", 1)
    return version == "TLSv1.3" or any(m in name for m in ("GCM", "CHACHA20", "CCM"))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_sslscan_no_old_protocols_no_cbc(ca: CA, tmp_path: Path) -> None:
    sslscan = require_tool("sslscan")
    cert, key = ca.issue(tmp_path, "server")
    reports = []
    with anyio.fail_after(120):
        async with _servers(server_context(cert, key), _weak_context(cert, key)) as ports:
            for port in ports:
                result = await anyio.run_process(
                    [sslscan, "--no-colour", "--xml=-", f"127.0.0.1:{port}"], check=False
                )
                reports.append(_sslscan_report(result.stdout.decode()))
    (protocols, ciphers), (weak_protocols, weak_ciphers) = reports
    assert protocols["tls1.0"] is False and protocols["tls1.1"] is False, protocols
    assert protocols["tls1.2"] is True and protocols["tls1.3"] is True, protocols
    assert ciphers and all(_is_aead(c) for c in ciphers), ciphers
    # the same scan sees what a weak server allows
    assert weak_protocols["tls1.0"] is True and weak_protocols["tls1.1"] is True, weak_protocols
    assert any(not _is_aead(c) for c in weak_ciphers), weak_ciphers
