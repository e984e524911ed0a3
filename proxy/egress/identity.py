"""Client certificates for mTLS, read with ``cryptography`` (imported only when one is used).

A wrong password, an unreadable file or a key that does not belong to its certificate is a
:class:`~proxy.egress.tls.TLSConfigError` naming the field. ``ssl`` can load a client key
only from a file, so the key is written re-encrypted under a one-time random password, in a
private (0700) directory that is removed as soon as the key is loaded: the decrypted key
never touches disk.
"""

from __future__ import annotations

import secrets
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from proxy.config.tls import TLSConfig
from proxy.egress.tls import TLSConfigError, read_file

PrivateKey = PrivateKeyTypes


def _client_identity(
    tls: TLSConfig, where: str
) -> tuple[PrivateKey, list[x509.Certificate]] | None:
    """The client key and certificate chain (leaf first), or None without client certs."""
    if tls.p12_file:
        password = tls.p12_password.get_secret_value().encode() if tls.p12_password else None
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(
                read_file(tls.p12_file, f"{where}.p12_file"), password
            )
        except ValueError:
            raise TLSConfigError(
                f"{where}.p12_password", "wrong password, or not a PKCS#12 bundle"
            ) from None
        if key is None or cert is None:
            raise TLSConfigError(f"{where}.p12_file", "holds no private key and certificate")
        return key, [cert, *extra]
    if tls.cert_file and tls.key_file:
        cert_bytes, cert_field = (
            read_file(tls.cert_file, f"{where}.cert_file"),
            f"{where}.cert_file",
        )
        key_bytes, key_field = read_file(tls.key_file, f"{where}.key_file"), f"{where}.key_file"
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


def load_client_identity(context: ssl.SSLContext, tls: TLSConfig, where: str) -> None:
    """Load the profile's client certificate and key into ``context``."""
    identity = _client_identity(tls, where)
    if identity is None:
        return
    key, chain = identity
    if not _same_key(key, chain[0]):
        raise TLSConfigError(where, "the client certificate does not belong to its key")
    _load_identity(context, key, chain)
