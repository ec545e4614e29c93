"""A throwaway PKI for the node examples: one CA, certificates for the nodes, made at start.

Shared by ``examples/rpc`` (a server and a client certificate per node) and
``examples/cluster`` (one certificate per node for both uses, re-issued in the middle of its
run: rotation). EC P-256, with the extensions a strict verifier wants. The CA's key stays in
the memory of the process that made it; nodes only get their own key and ``ca.pem``.
Files are replaced atomically (key first, then certificate), so a server that reloads in
between sees a mismatched pair at worst, keeps its current one and loads the new pair at its
next check.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PKI", "cert_paths", "serial_of"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cert_paths(directory: Path, stem: str) -> tuple[Path, Path]:
    """(certificate, key) of ``stem`` in ``directory``: ``<stem>.pem``, ``<stem>.key``."""
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def serial_of(pem_or_der: bytes) -> int:
    if pem_or_der.startswith(b"-----"):
        return x509.load_pem_x509_certificate(pem_or_der).serial_number
    return x509.load_der_x509_certificate(pem_or_der).serial_number


class PKI:
    """A CA in ``directory`` (``ca.pem``) that issues certificates next to it."""

    def __init__(self, directory: Path, *, ca_name: str = "resilience examples CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(ca_name))
            .issuer_name(_name(ca_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(self._ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = directory / "ca.pem"
        _replace(self.ca, self._cert.public_bytes(serialization.Encoding.PEM))
        #: stem -> serial of its current certificate
        self.serials: dict[str, int] = {}

    def issue(
        self, name: str, *, days: int = 1, server: bool = True, client: bool = True,
        stem: str | None = None,
    ) -> int:
        """Write ``<stem>.key`` and ``<stem>.pem`` (``stem`` defaults to ``name``): a
        certificate for the common name ``name``, valid ``days`` days for 127.0.0.1 and
        localhost, for server use, client use or both; returns its serial number."""
        if not (server or client):
            raise ValueError("a certificate for neither server nor client use")
        stem = name if stem is None else stem
        purposes = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        purposes += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_path, key_path = cert_paths(self.directory, stem)
        _replace(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ), mode=0o600)
        _replace(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        self.serials[stem] = serial
        return serial
