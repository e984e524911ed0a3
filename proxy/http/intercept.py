"""TLS interception for ``CONNECT host:443`` (``tls_intercept``): the local CA and the leaf
certificates it issues on the fly.

- The CA (``tokenproxy ca init``): an ECDSA P-256 key, sealed with the master key on disk
  (``enc:v1:``), and its self-signed certificate, which clients add to their trust store.
- A leaf per host, issued when a tunnel to it first opens: SAN = that host, valid for a day,
  its key made in memory and loaded into the TLS context through an anonymous in-memory
  file (``memfd``): no key of a leaf ever reaches the disk. Cached per host; a new one is
  issued before the old expires.
- The server side offers TLS 1.2+ and ALPN ``http/1.1`` only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.secrets.envelope import MasterKeys

LEAF_LIFETIME = 86400.0
_RENEW_BEFORE = 3600.0
CA_NAME = "tokenproxy local CA"
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def make_ca(keys: MasterKeys) -> tuple[bytes, str]:
    """A new CA: its certificate (PEM) and its key, sealed with the master key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), keys.encrypt(pem.decode())


@dataclass
class _Leaf:
    context: ssl.SSLContext
    expires: float


class LeafIssuer:
    """Server-side TLS contexts, one per intercepted host, signed by the local CA."""

    def __init__(self, ca_cert_file: str, ca_key_file: str, keys: MasterKeys) -> None:
        """Raises ValueError (said by field) when the CA cannot be read or unsealed."""
        try:
            self._ca_cert = x509.load_pem_x509_certificate(Path(ca_cert_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"tls_intercept.ca_cert_file: cannot read the CA ({exc})") from None
        try:
            pem = keys.decrypt(Path(ca_key_file).read_text()).encode()
            key = serialization.load_pem_private_key(pem, password=None)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"tls_intercept.ca_key_file: cannot unseal the CA key ({exc})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("tls_intercept.ca_key_file: not the key `tokenproxy ca init` makes")
        self._ca_key = key
        self._leaves: dict[str, _Leaf] = {}

    def context_for(self, host: str) -> ssl.SSLContext:
        leaf = self._leaves.get(host)
        if leaf is None or leaf.expires - time.time() < _RENEW_BEFORE:
            leaf = self._leaves[host] = self._issue(host)
        return leaf.context

    def _issue(self, host: str) -> _Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(seconds=LEAF_LIFETIME))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        # load_cert_chain reads only from a path: an anonymous file in memory, closed at once.
        fd = os.memfd_create("tokenproxy-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return _Leaf(context, time.time() + LEAF_LIFETIME)
