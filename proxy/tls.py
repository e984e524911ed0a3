"""Client-side SSL contexts for upstreams and token endpoints, built once at start.

Guarantees: TLS 1.2 or newer; certificate and hostname verification on unless
``insecure_skip_verify``; a custom CA replaces the system store unless ``system_ca``; client
certificates from PEM files, inline PEM or PKCS#12, all read with ``cryptography`` so a wrong
password, an unreadable file or a key that does not belong to its certificate is a
:class:`TLSConfigError` naming the field. ``ssl`` can load a client key only from a file, so
the key is written re-encrypted under a one-time random password, in a private (0700)
directory that is removed as soon as the key is loaded: the decrypted key never touches disk.
"""

from __future__ import annotations

import secrets
import ssl
import tempfile
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from proxy.config.tls import TLSConfig

PrivateKey = PrivateKeyTypes


class TLSConfigError(ValueError):
    """``field`` is the full config path of the value that cannot be used."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(field, f"cannot read {path} ({exc.strerror})") from None


def _client_identity(
    tls: TLSConfig, where: str
) -> tuple[PrivateKey, list[x509.Certificate]] | None:
    """The client key and certificate chain (leaf first), or None without client certs."""
    if tls.p12_file:
        password = tls.p12_password.get_secret_value().encode() if tls.p12_password else None
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(
                _read(tls.p12_file, f"{where}.p12_file"), password
            )
        except ValueError:
            raise TLSConfigError(
                f"{where}.p12_password", "wrong password, or not a PKCS#12 bundle"
            ) from None
        if key is None or cert is None:
            raise TLSConfigError(f"{where}.p12_file", "holds no private key and certificate")
        return key, [cert, *extra]
    if tls.cert_file and tls.key_file:
        cert_bytes, cert_field = _read(tls.cert_file, f"{where}.cert_file"), f"{where}.cert_file"
        key_bytes, key_field = _read(tls.key_file, f"{where}.key_file"), f"{where}.key_file"
    elif tls.cert_pem and tls.key_pem:
        cert_bytes, cert_field = tls.cert_pem.get_secret_value().encode(), f"{where}.cert_pem"
        key_bytes, key_field = tls.key_pem.get_secret_value().encode(), f"{where}.key_pem"
    else:
        return None
    password = tls.key_password.get_secret_value().encode() if tls.key_password else None
    try:
        key = serialization.load_pem_private_key(key_bytes, password)
    except TypeError:
        raise TLSConfigError(
            f"{where}.key_password",
            "the key is encrypted: set key_password"
            if password is None
            else "the key is not encrypted: remove key_password",
        ) from None
    except ValueError:
        field = f"{where}.key_password" if password else key_field
        raise TLSConfigError(field, "wrong password, or not a PEM private key") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_bytes)
    except ValueError:
        raise TLSConfigError(cert_field, "not a PEM certificate") from None
    return key, chain


def _same_key(key: PrivateKey, certificate: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == certificate.public_key().public_bytes(
        der, spki
    )


def _load_identity(context: ssl.SSLContext, key: PrivateKey, chain: list[x509.Certificate]) -> None:
    one_time = secrets.token_urlsafe(32).encode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time),
    )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    with tempfile.TemporaryDirectory(prefix="tokenproxy-tls-") as private:  # mode 0700
        key_path, chain_path = Path(private, "key.pem"), Path(private, "chain.pem")
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        chain_path.write_bytes(chain_pem)
        context.load_cert_chain(chain_path, key_path, password=one_time)


def client_ssl_context(tls: TLSConfig | None, where: str) -> ssl.SSLContext:
    """The SSL context for one TLS profile; ``where`` is its config path, for errors."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls is not None and tls.has_custom_ca:
        if not tls.system_ca:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # pinned: nothing but this CA
        field = f"{where}.ca_file" if tls.ca_file else f"{where}.ca_pem"
        cadata = tls.ca_pem if tls.ca_pem else _read(tls.ca_file or "", field).decode("latin-1")
        try:
            context.load_verify_locations(cadata=cadata)
        except (ssl.SSLError, ValueError):
            raise TLSConfigError(field, "holds no PEM CA certificate") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is None:
        return context
    identity = _client_identity(tls, where)
    if identity is not None:
        key, chain = identity
        if not _same_key(key, chain[0]):
            raise TLSConfigError(where, "the client certificate does not belong to its key")
        _load_identity(context, key, chain)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_CLIENT_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
)
REJECTED_CLIENT_CERT_HINT = (
    "over TLS 1.3 this is also how a server rejects the client certificate, or asks for one "
    "that was not configured"
)


def tls_failure(exc: BaseException) -> str | None:
    """What went wrong, in words fit for clients and logs; None if ``exc`` is no TLS failure.

    Certificate problems carry OpenSSL's verdict (unknown CA, hostname mismatch, expired);
    handshake alerts name the client certificate when that is what the server refused.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        verdict = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        return f"certificate verification failed: {verdict}"
    if isinstance(exc, aiohttp.ClientSSLError):
        reason = str(getattr(exc.os_error, "reason", None) or "handshake failed")
        if any(alert in reason.upper() for alert in _CLIENT_CERT_ALERTS):
            return f"the server rejected the client certificate, or required one ({reason})"
        return f"handshake failed ({reason})"
    return None


def describe_tls(tls: TLSConfig | None) -> dict[str, object]:
    """For ``/connectors``: what kind of TLS, never a path's content or a password."""
    if tls is None:
        return {"custom_ca": False, "client_certificate": False, "insecure_skip_verify": False}
    return {
        "custom_ca": tls.has_custom_ca,
        "client_certificate": tls.has_client_certificate,
        "insecure_skip_verify": tls.insecure_skip_verify,
        **({"server_name": tls.server_name} if tls.server_name else {}),
    }
