"""``serve_tls``: a TLS listener on anyio with handshake timeouts, a connection limit,
certificate reload and metrics.

A connection holds one of ``max_connections`` slots from ``accept`` until it is closed, and
the accept loops wait for a free slot before accepting, so extra clients wait in the kernel's
backlog instead of being accepted and starved. Handshakes run in the connection's own task
under ``handshake_timeout``: a slow or broken client only ever costs its own slot.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus
from anyio.streams.tls import TLSStream
from prometheus_client import CollectorRegistry

from ._exporter import Hub, TLSSeries
from ._tls_context import CertSource, reload_certificates, source_of

__all__ = ["serve_tls"]

log = logging.getLogger("resilience.tls")

Handler = Callable[[TLSStream], Awaitable[object]]

SUCCESS, FAILURE, TIMEOUT = range(3)  # indexes of exporter.HANDSHAKE_OUTCOMES

#: How long closing a connection may wait for the peer's close_notify.
CLOSE_GRACE = 1.0
#: Errors a handler sees when the peer misbehaves; logged at DEBUG only.
_PEER_GONE = (anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError, ConnectionError)
#: Pause after a failing accept (e.g. out of file descriptors) before trying again.
ACCEPT_RETRY = 0.1


class _Server:
    """One running ``serve_tls``: what the metrics hub reads at scrape time."""

    __slots__ = (
        "__weakref__", "active", "ctx", "handler", "handshake_timeout", "name", "series",
        "slots", "source",
    )

    def __init__(
        self, handler: Handler, ctx: ssl.SSLContext, series: TLSSeries, name: str,
        handshake_timeout: float, max_connections: int,
    ) -> None:
        self.handler = handler
        self.ctx = ctx
        self.series = series
        self.name = name
        self.handshake_timeout = handshake_timeout
        self.slots = anyio.Semaphore(max_connections)
        self.source: CertSource | None = source_of(ctx)
        self.active = 0

    @property
    def connections_active(self) -> int:
        return self.active

    @property
    def certificate_expiry_timestamp(self) -> float | None:
        expiry = None if self.source is None else self.source.expiry
        return None if expiry is None else expiry.timestamp()

    def _count(self, outcome: int) -> None:
        with self.series.lock:
            self.series.handshakes[outcome] += 1

    async def accept_loop(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await self.slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self.slots.release()
                log.warning("resilience.tls: server %r failed to accept: %s", self.name, exc)
                await anyio.sleep(ACCEPT_RETRY)
                continue
            except BaseException:
                self.slots.release()
                raise
            tg.start_soon(self.connection, stream)

    async def connection(self, sock: SocketStream) -> None:
        tls: TLSStream | None = None
        try:
            with anyio.move_on_after(self.handshake_timeout):
                try:
                    tls = await TLSStream.wrap(
                        sock, server_side=True, ssl_context=self.ctx, standard_compatible=True
                    )
                except Exception as exc:  # ssl.SSLError, BrokenResourceError, EndOfStream, ...
                    self._count(FAILURE)
                    log.debug("resilience.tls: server %r: handshake failed: %r", self.name, exc)
                    return
            if tls is None:
                self._count(TIMEOUT)
                log.debug("resilience.tls: server %r: handshake timed out", self.name)
                return
            self._count(SUCCESS)
            self.active += 1
            try:
                await self.handler(tls)
            except _PEER_GONE as exc:  # the peer reset or cut the connection: not a bug
                log.debug("resilience.tls: server %r: connection broken: %r", self.name, exc)
            except Exception:
                log.exception("resilience.tls: handler of server %r failed", self.name)
            finally:
                self.active -= 1
        finally:
            try:
                if tls is not None:  # close_notify, bounded, even when we are being cancelled
                    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE):
                        try:
                            await tls.aclose()
                        except Exception:
                            pass
            finally:
                await anyio.aclose_forcefully(sock)
                self.slots.release()

    async def watch(self, source: CertSource, interval: float) -> None:
        """Reload the certificate when its files change; keep the old one if they are bad."""
        failed: tuple[tuple[int, ...], ...] | None = None
        while True:
            await anyio.sleep(interval)
            signature = source.current_signature()
            if signature == source.signature or signature == failed:
                continue
            try:
                reload_certificates(self.ctx)
            except Exception as exc:  # OSError, ValueError; never let it stop the server
                failed = signature
                log.error(
                    "resilience.tls: server %r keeps its current certificate: %s", self.name, exc
                )
            else:
                failed = None
                log.info(
                    "resilience.tls: server %r loaded a new certificate from %s (expires %s)",
                    self.name, source.certfile, source.expiry,
                )


def _validate(
    port: int, ssl_context: ssl.SSLContext, handshake_timeout: float, max_connections: int,
    reload_interval: float | None,
) -> None:
    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context)!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if not handshake_timeout > 0:
        raise ValueError(f"handshake_timeout must be > 0, got {handshake_timeout!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or (
        max_connections < 1
    ):
        raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
    if reload_interval is not None and not reload_interval > 0:
        raise ValueError(f"reload_interval must be > 0 or None, got {reload_interval!r}")


async def serve_tls(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int,
    ssl_context: ssl.SSLContext,
    handshake_timeout: float = 10.0,
    max_connections: int = 1000,
    reload_interval: float | None = 60.0,
    name: str = "tls",
    metrics_registry: CollectorRegistry | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler(stream)`` for each TLS connection on ``host:port`` until cancelled.

    Start it with ``port = await task_group.start(partial(serve_tls, ...))`` to learn the bound
    port (``port=0`` picks a free one). ``stream`` is an anyio ``TLSStream``; closing it sends
    close_notify, and it is closed for you when ``handler`` returns. Handshakes that fail or
    take longer than ``handshake_timeout`` are dropped and counted; at most ``max_connections``
    connections are served at once. With a context from ``server_context`` the certificate
    files are checked every ``reload_interval`` seconds (``None``: never) and reloaded when
    they change. Metrics go to ``metrics_registry`` (prometheus-client's default when ``None``)
    under the ``server`` label ``name``.
    """
    _validate(port, ssl_context, handshake_timeout, max_connections, reload_interval)
    series = Hub.of(metrics_registry).tls_server(name)
    server = _Server(handler, ssl_context, series, name, handshake_timeout, max_connections)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        with series.lock:
            series.servers.add(server)
        try:
            async with anyio.create_task_group() as tg:
                if reload_interval is not None and server.source is not None:
                    tg.start_soon(server.watch, server.source, reload_interval)
                for sub in listener.listeners:
                    assert isinstance(sub, SocketListener)
                    tg.start_soon(server.accept_loop, sub, tg)
                task_status.started(listener.extra(SocketAttribute.local_port))
        finally:
            with series.lock:
                series.servers.discard(server)
