"""The ``tls`` block: trust (custom CA, pinning), client certificates (mTLS), SNI.

Only the shape is checked here; whether the files load, the passwords fit and the key
belongs to the certificate is checked by the build step (:mod:`proxy.egress.tls`), where a
failure is a config error naming the field.
"""

from __future__ import annotations

from proxy.config.base import SecretStr, block


@block
class TLSConfig:
    ca_file: str | None = None  # custom CA bundle (PEM file)
    ca_pem: str | None = None  # custom CA bundle, inline PEM
    system_ca: bool = False  # with a custom CA, also trust the system store
    server_name: str | None = None  # SNI and the name to verify, if not the URL's
    cert_file: str | None = None  # client certificate chain (PEM file)
    key_file: str | None = None  # client private key (PEM file)
    cert_pem: SecretStr | None = None  # client certificate chain, inline PEM
    key_pem: SecretStr | None = None  # client private key, inline PEM
    key_password: SecretStr | None = None  # for an encrypted PEM key
    p12_file: str | None = None  # client certificate and key (PKCS#12)
    p12_password: SecretStr | None = None
    insecure_skip_verify: bool = False  # trust any certificate: tests only; warned at start

    def __post_init__(self) -> None:
        if self.ca_file and self.ca_pem:
            raise ValueError("give the CA as ca_file or ca_pem, not both")
        sources = [
            name
            for name, given in (
                ("cert_file/key_file", self.cert_file or self.key_file),
                ("cert_pem/key_pem", self.cert_pem or self.key_pem),
                ("p12_file", self.p12_file),
            )
            if given
        ]
        if len(sources) > 1:
            raise ValueError(f"give one client certificate source, not {' and '.join(sources)}")
        if bool(self.cert_file) != bool(self.key_file) or bool(self.cert_pem) != bool(self.key_pem):
            raise ValueError("a client certificate needs both its certificate and its key")
        if self.p12_password and not self.p12_file:
            raise ValueError("p12_password without p12_file")

    @property
    def has_client_certificate(self) -> bool:
        return bool(self.cert_file or self.cert_pem or self.p12_file)

    @property
    def has_custom_ca(self) -> bool:
        return bool(self.ca_file or self.ca_pem)
