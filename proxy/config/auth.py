"""The ``auth`` block of a connector for credentials fixed in the config.

Each ``type`` is one model; :data:`proxy.config.models.AuthConfig` joins them (and the
token-issuing types of :mod:`proxy.config.oauth2`) in one tagged union.
"""

from __future__ import annotations

from typing import Annotated, Literal

from proxy.config.base import Check, FieldValue, HeaderName, Rules, SecretStr, block


@block
class NoneAuthConfig:
    """Pass-through: the proxy adds no credential."""

    type: Literal["none"]


@block
class InjectedAuthConfig:
    """Where and how a credential goes into the upstream request."""

    header: HeaderName = "Authorization"  # the header that carries the credential
    token_prefix: FieldValue = "Bearer"  # put before the token with one space; "": raw
    # Send the raw token as this query parameter instead of a header.
    query_param: Annotated[str, Rules(min_length=1)] | None = None


def _secret_field_value(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if not raw:
        raise ValueError("must not be empty")
    if not all(0x20 <= ord(ch) <= 0x7E for ch in raw):
        # Never echo the value: it is a secret.
        raise ValueError("may hold only printable ASCII characters (no CR, LF or controls)")
    return value


@block
class StaticAuthConfig(InjectedAuthConfig):
    """A fixed token or API key."""

    type: Literal["static"]
    token: Annotated[SecretStr, Check(_secret_field_value)]


def _no_colon(value: str) -> str:
    if ":" in value:
        raise ValueError("must not contain ':' (RFC 7617 §2)")
    return value


@block
class BasicAuthConfig(InjectedAuthConfig):
    """HTTP Basic (RFC 7617): ``username:password``, base64-encoded, prefix ``Basic``."""

    type: Literal["basic"]
    token_prefix: FieldValue = "Basic"
    username: Annotated[str, Check(_no_colon)]
    password: SecretStr
