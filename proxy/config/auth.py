"""The ``auth`` block of a connector for credentials fixed in the config.

Each ``type`` is one model; :data:`proxy.config.models.AuthConfig` joins them (and the
token-issuing types of :mod:`proxy.config.oauth2`) in one tagged union.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from proxy.config.base import FieldValue, HeaderName, StrictModel


class NoneAuthConfig(StrictModel):
    """Pass-through: the proxy adds no credential."""

    type: Literal["none"]


class InjectedAuthConfig(StrictModel):
    """Where and how a credential goes into the upstream request."""

    header: HeaderName = Field("Authorization", description="header that carries the credential")
    token_prefix: FieldValue = Field(
        "Bearer", description='put before the token with one space; "" sends the raw token'
    )
    query_param: str | None = Field(
        None,
        min_length=1,
        description="send the raw token as this query parameter instead of a header",
    )


def _secret_field_value(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if not raw:
        raise ValueError("must not be empty")
    if not all(0x20 <= ord(ch) <= 0x7E for ch in raw):
        # Never echo the value: it is a secret.
        raise ValueError("may hold only printable ASCII characters (no CR, LF or controls)")
    return value


class StaticAuthConfig(InjectedAuthConfig):
    """A fixed token or API key."""

    type: Literal["static"]
    token: SecretStr

    _check_token = field_validator("token")(_secret_field_value)


class BasicAuthConfig(InjectedAuthConfig):
    """HTTP Basic (RFC 7617): ``username:password``, base64-encoded, prefix ``Basic``."""

    type: Literal["basic"]
    token_prefix: FieldValue = "Basic"
    username: str
    password: SecretStr

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must not contain ':' (RFC 7617 §2)")
        return value
