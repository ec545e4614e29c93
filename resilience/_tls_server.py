"""``serve_tls``: a TLS listener on anyio with handshake timeouts, a connection limit,
certificate reload and metrics.

A connection holds one of ``max_connections`` slots from ``accept`` until it is closed, and
the accept loops wait for a free slot before accepting, so extra clients wait in the kernel's
backlog instead of being accepted and starved. Handshakes run in the connection's own task
under ``handshake_timeout``: a slow or broken client only ever costs its own slot.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream
from prometheus_client import CollectorRegistry

from ._exporter import Hub, TLSSeries
from ._names import check_name
from ._tls_context import CertSource, install, source_of

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


def _anyio_internals_ok() -> bool:
    """Whether anyio's ``TLSStream`` has the private parts :class:`_TLSStream` relies on."""
    names = {f.name for f in dataclasses.fields(TLSStream)}
    return {"_ssl_object", "_read_bio", "_write_bio"} <= names and callable(
        getattr(TLSStream, "_flush_write_bio", None)
    ) and callable(getattr(TLSStream, "_call_sslobject_method", None))


@dataclasses.dataclass(eq=False)
class _TLSStream(TLSStream):
    """anyio's ``TLSStream`` whose ``receive`` returns every record already received.

    OpenSSL decrypts one record (at most 16 KiB) per read, so plain ``TLSStream.receive``
    hands a 64 KiB transport read to the handler in four pieces: four passes through the
    handler, four ``send`` calls and syscalls. This one keeps decrypting what is already
    buffered, without waiting, up to ``max_bytes`` (as asyncio's SSL transport does). An
    error met while draining is raised by the next ``receive``, after the data before it.
    """

    _error: BaseException | None = dataclasses.field(default=None, init=False, repr=False)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._error is not None:
            error, self._error = self._error, None
            await self._call_sslobject_method(_raise, error)  # mapped as anyio maps it
        data = await super().receive(max_bytes)
        size, obj, bio = len(data), self._ssl_object, self._read_bio
        if size >= max_bytes or not (bio.pending or obj.pending()):
            return data
        parts = [data]
        while size < max_bytes and (bio.pending or obj.pending()):
            try:
                more = obj.read(max_bytes - size)
            except ssl.SSLWantReadError:  # the rest of a record is still on its way
                break
            except ssl.SSLError as exc:
                self._error = exc
                break
            if not more:  # close_notify: the next receive() raises EndOfStream
                break
            parts.append(more)
            size += len(more)
        if self._write_bio.pending:  # e.g. the answer to a TLS 1.3 KeyUpdate
            await self._flush_write_bio()
        return b"".join(parts)


#: Bytes asked of the socket per read: asyncio's transport reads up to 256 KiB at a time, and
#: anyio would hand TLSStream's default 64 KiB requests slices of that, copying the rest.
TRANSPORT_READ = 256 * 1024


class _WideReads(ByteStream):
    """The connection's socket stream, read ``TRANSPORT_READ`` bytes at a time."""

    def __init__(self, inner: SocketStream) -> None:
        self.inner = inner
        self.send = inner.send  # type: ignore[method-assign]  # no extra frame per write

    async def receive(self, max_bytes: int = TRANSPORT_READ) -> bytes:
        return await self.inner.receive(max(max_bytes, TRANSPORT_READ))

    async def send(self, item: bytes) -> None:  # replaced per instance in __init__
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


def _raise(error: BaseException) -> None:
    raise error


#: The stream class handed to handlers (plain ``TLSStream`` if anyio's internals moved).
STREAM: type[TLSStream] = _TLSStream if _anyio_internals_ok() else TLSStream


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
            try:  # a free slot costs no event-loop turn (accept() is a checkpoint anyway)
                self.slots.acquire_nowait()
            except anyio.WouldBlock:
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
        closed = False
        try:
            with anyio.move_on_after(self.handshake_timeout):
                try:
                    tls = await STREAM.wrap(
                        _WideReads(sock), server_side=True, ssl_context=self.ctx,
                        standard_compatible=True,
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
                            await tls.aclose()  # closes the socket too
                            closed = True
                        except Exception:
                            pass
            finally:
                if not closed:
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
                install(self.ctx, source)
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


#: Upper bound of the time parameters (one day), as for command timeouts.
MAX_SECONDS = 86_400.0


def _is_async_callable(fn: object) -> bool:
    """A coroutine function, an object whose ``__call__`` is one, or a partial of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (the method itself, not callable())
    )


def _check_seconds(field: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        extra = " or None" if optional else ""
        raise TypeError(f"{field} must be a number of seconds{extra}, got {value!r}")
    if not 0 < value <= MAX_SECONDS or math.isnan(value):
        raise ValueError(f"{field} must be > 0 and <= {MAX_SECONDS:g} seconds, got {value!r}")


def _validate(
    handler: object, port: object, ssl_context: object, handshake_timeout: object,
    max_connections: object, reload_interval: object,
) -> None:
    if not callable(handler):
        raise TypeError(f"handler must be an async function, got {handler!r}")
    if not _is_async_callable(handler):
        raise TypeError(
            f"handler must be an async function (async def handler(stream): ...), got the "
            f"plain callable {handler!r}"
        )
    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context)!r}")
    if ssl_context.protocol == ssl.PROTOCOL_TLS_CLIENT or ssl_context.check_hostname:
        raise ValueError(
            f"ssl_context must be a server context (resilience.tls.server_context(), or "
            f"PROTOCOL_TLS_SERVER without check_hostname), got a client context "
            f"({ssl_context.protocol!r}, check_hostname={ssl_context.check_hostname})"
        )
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int in 0..65535, got {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    _check_seconds("handshake_timeout", handshake_timeout)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise TypeError(f"max_connections must be an int >= 1, got {max_connections!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
    _check_seconds("reload_interval", reload_interval, optional=True)


async def _listen(host: str, port: int) -> MultiListener[SocketStream]:
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        message = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        try:
            new = type(exc)(exc.errno, message)
        except TypeError:  # an OSError subclass with another signature
            new = OSError(exc.errno, message)
        raise new from exc


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
    under the ``server`` label ``name``. Bad arguments (a plain function as ``handler``, a
    client context, ...) raise ``TypeError``/``ValueError`` before anything starts; an
    address in use raises ``OSError`` naming ``host:port``.
    """
    name = check_name(name, "TLS server")
    _validate(handler, port, ssl_context, handshake_timeout, max_connections, reload_interval)
    listener = await _listen(host, port)
    async with listener:
        series = Hub.of(metrics_registry).tls_server(name)
        server = _Server(handler, ssl_context, series, name, handshake_timeout, max_connections)
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
