"""resilience.tls contexts: profiles, groups, bad input, expiry and reload_certificates."""

from __future__ import annotations

import logging
import ssl
from datetime import UTC
from pathlib import Path

import pytest
from cryptography import x509
from test_tls_certs import PKI, der, make_pki

from resilience import _tls_groups
from resilience._tls_groups import restrict_groups
from resilience.tls import (
    certificate_expiry,
    client_context,
    reload_certificates,
    server_context,
)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


def memory_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a full handshake between two contexts in memory; SSLError if it fails."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    pending = {"client", "server"}
    for _ in range(10):
        for label, obj in (("client", cli), ("server", srv)):
            if label in pending:
                try:
                    obj.do_handshake()
                    pending.discard(label)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            break
    assert not pending
    return cli, srv


# -- contexts --------------------------------------------------------------------------------


def test_intermediate_profile(pki: PKI) -> None:
    ctx = server_context(pki.cert, pki.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(n.startswith("ECDHE-") for n in tls12)
    assert all("GCM" in n or "CHACHA20" in n for n in tls12)
    cli, _ = memory_handshake(ctx, client_context(pki.ca.path))
    assert cli.version() == "TLSv1.3"
    tls12_client = client_context(pki.ca.path)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    cli, _ = memory_handshake(ctx, tls12_client)
    assert cli.version() == "TLSv1.2"
    cipher = cli.cipher()
    assert cipher is not None and cipher[0].startswith("ECDHE-ECDSA-")


def test_modern_profile_refuses_tls12(pki: PKI) -> None:
    ctx = server_context(pki.cert, pki.key, profile="modern")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert memory_handshake(ctx, client_context(pki.ca.path))[0].version() == "TLSv1.3"
    tls12_client = client_context(pki.ca.path)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        memory_handshake(ctx, tls12_client)


def _legacy_client(ca: Path, ciphers: str, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = maximum
    ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    ("ciphers", "maximum"),
    [
        ("ALL", ssl.TLSVersion.TLSv1),
        ("ALL", ssl.TLSVersion.TLSv1_1),
        ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256", ssl.TLSVersion.TLSv1_2),  # CBC
    ],
)
def test_legacy_clients_refused(pki: PKI, ciphers: str, maximum: ssl.TLSVersion) -> None:
    legacy = _legacy_client(pki.ca.path, ciphers, maximum)
    # The same client gets through to a permissive server: the refusal below is ours.
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    weak.minimum_version = ssl.TLSVersion.TLSv1
    weak.set_ciphers("ALL:@SECLEVEL=0")
    weak.load_cert_chain(pki.cert, pki.key)
    memory_handshake(weak, legacy)
    with pytest.raises(ssl.SSLError):
        memory_handshake(server_context(pki.cert, pki.key), legacy)


@pytest.mark.parametrize(("group", "accepted"), [
    ("X25519", True), ("prime256v1", True), ("secp384r1", True),
    ("X448", False), ("secp521r1", False), ("ffdhe2048", False),
])
@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_key_exchange_groups(pki: PKI, profile: str, group: str, accepted: bool) -> None:
    server = server_context(pki.cert, pki.key, profile=profile)  # type: ignore[arg-type]
    client = client_context(pki.ca.path)
    assert restrict_groups(client, group)  # the client offers only this group
    if accepted:
        memory_handshake(server, client)
    else:
        with pytest.raises(ssl.SSLError):
            memory_handshake(server, client)
    assert memory_handshake(ssl_context_default_groups(pki), client)  # offered for real


def test_groups_fall_back_to_p256_when_openssl_is_out_of_reach(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p256_only, x25519_only = client_context(pki.ca.path), client_context(pki.ca.path)
    assert restrict_groups(p256_only, "prime256v1") and restrict_groups(x25519_only, "X25519")
    monkeypatch.setattr(_tls_groups, "_lib", False)  # as on a build without usable symbols
    monkeypatch.setattr(_tls_groups, "_warned", False)
    with caplog.at_level(logging.WARNING, "resilience.tls"):
        server = server_context(pki.cert, pki.key)
        server_context(pki.cert, pki.key)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # said once
    assert "using prime256v1 only" in caplog.text
    memory_handshake(server, p256_only)  # still compliant ...
    with pytest.raises(ssl.SSLError):  # ... with one group
        memory_handshake(server, x25519_only)


def ssl_context_default_groups(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert, pki.key)
    return ctx


def test_client_context(pki: PKI) -> None:
    ctx = client_context(pki.ca.path)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    server = server_context(pki.cert, pki.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        memory_handshake(server, ctx, hostname="example.org")  # hostname is checked
    with pytest.raises(ssl.SSLCertVerificationError):  # the system store does not know our CA
        memory_handshake(server, client_context())


def test_encrypted_key(pki: PKI) -> None:
    cert, key = pki.ca.issue(pki.dir, "locked", password=b"s3cret")
    memory_handshake(server_context(cert, key, password="s3cret"), client_context(pki.ca.path))
    memory_handshake(
        server_context(cert, key, password=lambda: b"s3cret"), client_context(pki.ca.path)
    )
    with pytest.raises(ValueError, match="locked.key"):
        server_context(cert, key, password="wrong")
    with pytest.raises(ValueError, match="locked.key"):
        server_context(cert, key)


def test_key_inside_certfile(pki: PKI) -> None:
    combined = pki.dir / "combined.pem"
    combined.write_bytes(pki.cert.read_bytes() + pki.key.read_bytes())
    memory_handshake(server_context(combined, None), client_context(pki.ca.path))


def test_bad_input_names_the_file(pki: PKI) -> None:
    missing = pki.dir / "nope.pem"
    with pytest.raises(FileNotFoundError, match="nope.pem") as info:
        server_context(missing, pki.key)
    assert info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        server_context(pki.cert, missing)
    garbage = pki.dir / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    with pytest.raises(ValueError, match="certfile .*garbage.pem"):
        server_context(garbage, pki.key)
    with pytest.raises(ValueError, match="keyfile .*garbage.pem"):
        server_context(pki.cert, garbage)
    with pytest.raises(ValueError, match="certfile .*server.key"):  # a key is not a certificate
        server_context(pki.key, pki.key)
    other_cert, other_key = pki.ca.issue(pki.dir, "other")
    with pytest.raises(ValueError, match=r"keyfile .*other.key does not match .*server.pem"):
        server_context(pki.cert, other_key)
    with pytest.raises(ValueError, match="not a regular file"):  # a directory is never read
        server_context(pki.dir, pki.key)
    with pytest.raises(ValueError, match="'bogus'"):
        server_context(pki.cert, pki.key, profile="bogus")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        server_context(pki.cert, pki.key, client_ca=missing)
    with pytest.raises(ValueError, match="client_ca .*garbage.pem"):
        server_context(pki.cert, pki.key, client_ca=garbage)
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        client_context(missing)
    with pytest.raises(ValueError, match="cafile .*garbage.pem"):
        client_context(garbage)
    with pytest.raises(ValueError, match="keyfile .*server.key given without a certfile"):
        client_context(pki.ca.path, keyfile=pki.key)
    with pytest.raises(ValueError, match="other.key does not match"):
        client_context(pki.ca.path, certfile=pki.cert, keyfile=other_key)


def test_rsa_key_too_weak_for_openssl_is_named(pki: PKI) -> None:
    cert, key = pki.ca.issue(pki.dir, "weak", rsa_bits=1024)
    with pytest.raises(ValueError, match="weak.pem"):
        server_context(cert, key)


def test_certificate_expiry(pki: PKI) -> None:
    expiry = certificate_expiry(pki.cert)
    assert expiry.tzinfo is not None and expiry.utcoffset() is not None
    cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    assert expiry == cert.not_valid_after_utc
    assert expiry.astimezone(UTC) == cert.not_valid_after_utc
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        certificate_expiry(pki.dir / "nope.pem")
    with pytest.raises(ValueError, match="server.key"):
        certificate_expiry(pki.key)


def test_reload_certificates(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    ctx = server_context(pki.cert, pki.key)
    client = client_context(pki.ca.path)
    old_conn, _ = memory_handshake(ctx, client)
    assert old_conn.getpeercert(binary_form=True) == der(pki.cert)
    new_cert, new_key = pki.ca.issue(pki.dir, "next", days=30)
    pki.cert.write_bytes(new_cert.read_bytes())
    pki.key.write_bytes(new_key.read_bytes())
    assert reload_certificates(ctx) is True
    assert memory_handshake(ctx, client)[0].getpeercert(binary_form=True) == der(new_cert)
    # Half-written pair: a new certificate whose key has not arrived yet.
    third_cert, _ = pki.ca.issue(pki.dir, "third")
    pki.cert.write_bytes(third_cert.read_bytes())
    with caplog.at_level(logging.ERROR, "resilience.tls"):
        assert reload_certificates(ctx) is False  # logged, the old pair stays
    assert "server.key does not match" in caplog.text
    assert memory_handshake(ctx, client)[0].getpeercert(binary_form=True) == der(new_cert)
    caplog.clear()
    pki.key.write_bytes(b"")  # truncated
    with caplog.at_level(logging.ERROR, "resilience.tls"):
        assert reload_certificates(ctx) is False
    assert "server.key holds no usable PEM private key" in caplog.text
    assert memory_handshake(ctx, client)[0].getpeercert(binary_form=True) == der(new_cert)
    caplog.clear()
    pki.key.unlink()  # gone for a moment (a renewal tool renaming files)
    with caplog.at_level(logging.ERROR, "resilience.tls"):
        assert reload_certificates(ctx) is False
    assert "keyfile not found" in caplog.text
    assert memory_handshake(ctx, client)[0].getpeercert(binary_form=True) == der(new_cert)
    assert reload_certificates(ssl.create_default_context()) is False  # nothing to reload
