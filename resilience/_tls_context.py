"""Hardened ``ssl.SSLContext`` factories, certificate (re)loading and expiry.

A server context remembers the files it was made from (in a weak map, so the context stays a
plain ``ssl.SSLContext`` that anyio and ASGI servers handle natively). Every load, first or
reload, works on one snapshot of the files: the bytes are read once, checked with
``cryptography`` (parse, key matches certificate), loaded into a scratch context, and only then
into the live one, so a half-written, broken or expired pair can never replace a good one.
Only regular files are read: a FIFO, device or directory is refused without blocking.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
import stat
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ._tls_groups import restrict_groups

__all__ = [
    "CertSource",
    "certificate_expiry",
    "client_context",
    "install",
    "reload_certificates",
    "server_context",
    "source_of",
]

log = logging.getLogger("resilience.tls")

StrPath: TypeAlias = str | os.PathLike[str]
Password: TypeAlias = str | bytes | Callable[[], str | bytes] | None
Profile: TypeAlias = Literal["intermediate", "modern"]

PROFILES: dict[str, ssl.TLSVersion] = {
    "intermediate": ssl.TLSVersion.TLSv1_2,
    "modern": ssl.TLSVersion.TLSv1_3,
}

#: TLS 1.2 suites of Mozilla's intermediate profile that are ECDHE + AEAD (its DHE ones are
#: left out). TLS 1.3 suites are OpenSSL's defaults, which are exactly the profile's three.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])

_HARDENING = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET


@dataclass
class CertSource:
    """Where a server context's certificate comes from, and what is loaded now."""

    certfile: Path
    keyfile: Path | None
    password: Password = field(repr=False)
    expiry: datetime | None = None
    signature: tuple[tuple[int, ...], ...] = ()
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def paths(self) -> tuple[Path, ...]:
        return (self.certfile,) if self.keyfile is None else (self.certfile, self.keyfile)

    def current_signature(self) -> tuple[tuple[int, ...], ...]:
        """Cheap change detector: (inode, size, mtime, ctime) of each file; () if missing."""
        out: list[tuple[int, ...]] = []
        for p in self.paths():
            try:
                st = p.stat()
            except OSError:
                out.append(())
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)


_sources: weakref.WeakKeyDictionary[ssl.SSLContext, CertSource] = weakref.WeakKeyDictionary()


def source_of(ctx: ssl.SSLContext) -> CertSource | None:
    """The files behind a context made by :func:`server_context` (``None`` for others)."""
    return _sources.get(ctx)


# -- reading and checking files -----------------------------------------------------------------


#: os.open flags: O_NONBLOCK so that opening a FIFO never waits for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | (
    getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


def _check_regular(mode: int, path: Path, what: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = (
        "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket" if stat.S_ISSOCK(mode) else "a special file"
    )
    raise ValueError(f"{what} {path} is not a regular file ({kind}): only regular files are read")


def _read(path: Path, what: str) -> bytes:
    """The bytes of the regular file ``path``; never blocks on a FIFO or reads a device."""
    try:
        _check_regular(os.stat(path).st_mode, path, what)  # no open() of a FIFO at all ...
        fd = os.open(path, _OPEN_FLAGS)
        try:  # ... and no race: what was opened is checked again
            _check_regular(os.fstat(fd).st_mode, path, what)
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found: {path}", str(path)) from None
    except OSError as exc:
        raise ValueError(f"{what} {path} is unreadable: {exc.strerror or exc}") from exc


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{what} {path} holds no valid PEM certificate: {exc}") from None
    return certs


def _check_validity(cert: x509.Certificate, path: Path, what: str) -> None:
    """``ValueError`` naming ``path`` unless ``cert`` is valid now."""
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        raise ValueError(
            f"{what} {path}: the certificate expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if cert.not_valid_before_utc > now:
        raise ValueError(
            f"{what} {path}: the certificate is not yet valid (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC)"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):  # none, or malformed extensions
        return False
    return constraints.ca


def _password_bytes(password: Password) -> bytes | None:
    if callable(password):
        password = password()
    if isinstance(password, str):
        return password.encode()
    return password


def _public_der(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der = public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert isinstance(der, bytes)
    return der


@dataclass(frozen=True)
class _Pair:
    """One consistent snapshot of a certificate chain and its key, already checked."""

    pem: bytes = field(repr=False)  # chain, then key: one file for load_cert_chain
    password: bytes | None = field(repr=False)
    expiry: datetime


def _read_pair(certfile: Path, keyfile: Path | None, password: Password) -> _Pair:
    cert_pem = _read(certfile, "certfile")
    certs = _certificates(cert_pem, certfile, "certfile")
    _check_validity(certs[0], certfile, "certfile")
    key_path, key_what = (certfile, "certfile") if keyfile is None else (keyfile, "keyfile")
    key_pem = cert_pem if keyfile is None else _read(keyfile, "keyfile")
    pw = _password_bytes(password)
    try:
        key = serialization.load_pem_private_key(key_pem, password=pw)
    except TypeError as exc:  # encrypted without password, or password for a plain key
        raise ValueError(f"{key_what} {key_path}: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"{key_what} {key_path} holds no usable PEM private key "
            f"(garbage, unsupported, or wrong password): {exc}"
        ) from None
    if _public_der(key.public_key()) != _public_der(certs[0].public_key()):
        raise ValueError(
            f"{key_what} {key_path} does not match the certificate in certfile {certfile}"
        )
    pem = cert_pem if keyfile is None else cert_pem.rstrip(b"\n") + b"\n" + key_pem
    return _Pair(pem, pw, certs[0].not_valid_after_utc)


@contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A private file holding ``data`` for OpenSSL to read (in memory on Linux)."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("resilience-tls", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="resilience-tls-", suffix=".pem")  # mode 0600
    try:
        with open(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def _load_pair(ctx: ssl.SSLContext, pair: _Pair, source: CertSource) -> None:
    """Check ``pair`` on a scratch context, then load it into ``ctx``."""
    names = f"certfile {source.certfile}" + (
        f" / keyfile {source.keyfile}" if source.keyfile is not None else ""
    )
    with _pem_path(pair.pem) as path:
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            scratch.load_cert_chain(path, password=pair.password)
        except ssl.SSLError as exc:  # e.g. a key too weak for OpenSSL's security level
            raise ValueError(f"{names}: OpenSSL rejects the pair: {exc}") from None
        ctx.load_cert_chain(path, password=pair.password)


def install(ctx: ssl.SSLContext, source: CertSource) -> None:
    """Load the pair ``source`` names into ``ctx``; raise (naming the file) if it is bad."""
    with source.lock:
        signature = source.current_signature()
        pair = _read_pair(source.certfile, source.keyfile, source.password)
        _load_pair(ctx, pair, source)
        source.expiry = pair.expiry
        source.signature = signature


def _load_ca(ctx: ssl.SSLContext, cafile: StrPath, what: str) -> None:
    path = Path(cafile)
    data = _read(path, what)
    certs = _certificates(data, path, what)
    if what == "client_ca" and not any(map(_is_ca, certs)):
        raise ValueError(
            f"{what} {path} holds no CA certificate (basicConstraints CA=true), "
            f"only {len(certs)} leaf certificate(s): give the CA that signs the clients"
        )
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} cannot be used as CA certificates: {exc}") from None


# -- public functions ---------------------------------------------------------------------------


def server_context(
    certfile: StrPath,
    keyfile: StrPath | None,
    *,
    password: Password = None,
    client_ca: StrPath | None = None,
    profile: Profile = "intermediate",
) -> ssl.SSLContext:
    """A server context meeting Mozilla's ``profile`` (``"intermediate"`` or ``"modern"``).

    ``client_ca`` turns on mutual TLS: clients must present a certificate it signed. The
    context remembers its files for :func:`reload_certificates`.
    """
    if profile not in PROFILES:
        raise ValueError(
            f"unknown TLS profile {profile!r}: expected one of {', '.join(map(repr, PROFILES))}"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = PROFILES[profile]
    # Profile: no server cipher preference (every suite is strong; clients know best).
    ctx.options = (ctx.options | _HARDENING) & ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_IGNORE_UNEXPECTED_EOF"):  # report truncation attacks, as anyio does
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    ctx.set_ciphers(TLS12_CIPHERS)
    restrict_groups(ctx)
    if client_ca is not None:
        _load_ca(ctx, client_ca, "client_ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    source = CertSource(
        Path(certfile), None if keyfile is None else Path(keyfile), password
    )
    install(ctx, source)
    _sources[ctx] = source
    return ctx


def client_context(
    cafile: StrPath | None = None,
    *,
    certfile: StrPath | None = None,
    keyfile: StrPath | None = None,
) -> ssl.SSLContext:
    """A verifying client context: TLS >= 1.2, ECDHE + AEAD, hostname checking on.

    ``cafile`` replaces the system's trust store; ``certfile``/``keyfile`` present a client
    certificate (mutual TLS).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(TLS12_CIPHERS)
    if cafile is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(ctx, cafile, "cafile")
    if certfile is not None:
        source = CertSource(Path(certfile), None if keyfile is None else Path(keyfile), None)
        install(ctx, source)
    elif keyfile is not None:
        raise ValueError(f"keyfile {keyfile} given without a certfile")
    return ctx


def reload_certificates(ctx: ssl.SSLContext) -> bool:
    """Load the current files of a :func:`server_context` context into it.

    New handshakes use the new pair; open connections keep theirs. Returns ``True`` when the
    new pair is loaded. A missing, half-written, broken, mismatched, expired or not yet valid
    pair is logged (ERROR, logger ``resilience.tls``), the old pair stays and the result is
    ``False``; so it is for a context not made by :func:`server_context`. Call it from the
    thread that serves the context (OpenSSL contexts are not meant to be changed while
    another thread starts a handshake on them).
    """
    source = _sources.get(ctx)
    if source is None:
        return False
    try:
        install(ctx, source)
    except (OSError, ValueError) as exc:
        log.error("resilience.tls: certificate not reloaded, the current one stays: %s", exc)
        return False
    return True


def certificate_expiry(certfile: StrPath) -> datetime:
    """When the first (leaf) certificate in ``certfile`` expires, as an aware UTC datetime."""
    path = Path(certfile)
    return _certificates(_read(path, "certfile"), path, "certfile")[0].not_valid_after_utc
