"""Client-side SSL contexts for upstreams and token endpoints, built once at start.

Guarantees: TLS 1.2 or newer; certificate and hostname verification on unless
``insecure_skip_verify``; a custom CA replaces the system store unless ``system_ca``; client
certificates from PEM files, inline PEM or PKCS#12 (:mod:`proxy.egress.identity`). Anything
that cannot be loaded is a :class:`TLSConfigError` naming the field.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from proxy.config.tls import TLSConfig


class TLSConfigError(ValueError):
    """``field`` is the full config path of the value that cannot be used."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def read_file(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(field, f"cannot read {path} ({exc.strerror})") from None


def client_ssl_context(tls: TLSConfig | None, where: str) -> ssl.SSLContext:
    """The SSL context for one TLS profile; ``where`` is its config path, for errors."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls is not None and tls.has_custom_ca:
        if not tls.system_ca:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # pinned: nothing but this CA
        field = f"{where}.ca_file" if tls.ca_file else f"{where}.ca_pem"
        cadata = tls.ca_pem if tls.ca_pem else read_file(tls.ca_file or "", field).decode("latin-1")
        try:
            context.load_verify_locations(cadata=cadata)
        except (ssl.SSLError, ValueError):
            raise TLSConfigError(field, "holds no PEM CA certificate") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is None:
        return context
    if tls.has_client_certificate:
        from proxy.egress.identity import load_client_identity  # cryptography: only when used

        load_client_identity(context, tls, where)
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
