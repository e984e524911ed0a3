"""The ``tls`` block: trust (custom CA, pinning), client certificates (mTLS), SNI.

Only the shape is checked here; whether the files load, the passwords fit and the key
belongs to the certificate is checked by the build step (:mod:`proxy.egress.tls`), where a
failure is a config error naming the field.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from proxy.config.base import StrictModel


class TLSConfig(StrictModel):
    ca_file: str | None = Field(None, description="custom CA bundle (PEM file)")
    ca_pem: str | None = Field(None, description="custom CA bundle, inline PEM")
    system_ca: bool = Field(False, description="with a custom CA, also trust the system store")
    server_name: str | None = Field(None, description="SNI and name to verify, if not the URL's")
    cert_file: str | None = Field(None, description="client certificate chain (PEM file)")
    key_file: str | None = Field(None, description="client private key (PEM file)")
    cert_pem: SecretStr | None = Field(None, description="client certificate chain, inline PEM")
    key_pem: SecretStr | None = Field(None, description="client private key, inline PEM")
    key_password: SecretStr | None = Field(None, description="for an encrypted PEM key")
    p12_file: str | None = Field(None, description="client certificate and key (PKCS#12)")
    p12_password: SecretStr | None = None
    insecure_skip_verify: bool = Field(
        False, description="trust any certificate: for tests only; warned about at every start"
    )

    @model_validator(mode="after")
    def _one_source_each(self) -> TLSConfig:
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
        return self

    @property
    def has_client_certificate(self) -> bool:
        return bool(self.cert_file or self.cert_pem or self.p12_file)

    @property
    def has_custom_ca(self) -> bool:
        return bool(self.ca_file or self.ca_pem)
