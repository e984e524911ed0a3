"""Config of auth types that obtain tokens from an identity provider.

:class:`TokenLifecycleConfig` holds what every token-issuing type shares (expiry, renewal,
re-auth); :class:`OAuth2AuthConfig` adds the OAuth2 grants of RFC 6749, and the extension
grants of :mod:`proxy.config.grants` (JWT bearer, token exchange).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import orjson
from yarl import URL

from proxy.config.auth import InjectedAuthConfig
from proxy.config.base import (
    SHAPE,
    Before,
    Check,
    HeaderName,
    Rules,
    SecretStr,
    Shaped,
    block,
    is_loopback_host,
)
from proxy.config.grants import EXTENSION_FIELDS_OF_GRANT, ExtensionGrantFields
from proxy.config.paths import JsonPathField
from proxy.config.tls import TLSConfig

# Parameters the grant itself sets; extra_params may not smuggle a second copy of them.
RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "username",
        "password",
        "refresh_token",
        "assertion",
        "subject_token",
        "actor_token",
    }
)
# What the authorization request of the code flow sets itself (RFC 6749 §4.1.1, RFC 7636).
RESERVED_AUTH_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
        # The answer must come back as a query to the callback (GET), not posted or in a
        # fragment, and the request must be the one we build.
        "response_mode",
        "request",
        "request_uri",
    }
)


def token_endpoint_url(value: str) -> str:
    """An https:// URL, or http:// to loopback only (RFC 6749 §3.2: the endpoint MUST use TLS)."""
    try:
        url = URL(value)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute https:// URL")
    if url.scheme == "http" and not is_loopback_host(url.host):
        raise ValueError("must use https:// (plain http:// only to a loopback address)")
    if url.user is not None or url.password is not None or url.fragment:
        raise ValueError("must not carry credentials or a fragment")
    return value


def json_object(value: Any) -> Any:
    """Accept a mapping, or a JSON object written as a string (how vendor UIs store them)."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError("must be a mapping, or a JSON object as a string") from None
    if not isinstance(value, dict):
        raise ValueError("must be a mapping, or a JSON object as a string")
    return {key: item if isinstance(item, str) else str(item) for key, item in value.items()}


def _client_error_statuses(value: list[int]) -> list[int]:
    if any(not 400 <= status <= 499 for status in value):
        raise ValueError("may list only 4xx statuses")
    return value


EndpointURL = Annotated[str, Check(token_endpoint_url)]
"""An identity provider's endpoint (and ``redirect_uri``: RFC 9700 §2.1)."""


@block
class TokenLifecycleConfig(InjectedAuthConfig):
    """How tokens from an identity provider are cached, renewed and re-acquired."""

    @property
    def interactive(self) -> bool:
        """True when a person authorizes once (``tokenproxy authorize``)."""
        return False

    # Seconds before expiry when a token is no longer handed out.
    refresh_margin: Annotated[float, Rules(ge=0)] = 60
    # The lifetime when the response gives none and the token is not a JWT.
    default_ttl: Annotated[float, Rules(gt=0)] = 300
    max_ttl: Annotated[float, Rules(gt=0)] = 86400  # longer lifetimes are clamped to this
    # Upstream statuses that invalidate the token and replay the request once.
    reauth_on: Annotated[list[int], Check(_client_error_statuses)] = dataclasses.field(
        default_factory=lambda: [401]
    )
    # The largest request body buffered so it can be replayed.
    reauth_max_body: Annotated[int, Rules(ge=0)] = 1024 * 1024
    # The least seconds between two forced refreshes of one connector.
    reauth_interval: Annotated[float, Rules(ge=0)] = 30
    tls: TLSConfig | None = None  # TLS for the token endpoint only


_CODE = ("authorization_code",)
_INTERACTIVE = ("authorization_code", "device_code")
FIELDS_OF_GRANT = {
    "authorization_url": _CODE,
    "redirect_uri": _CODE,
    "auth_params": _CODE,
    "auth_params_map": _CODE,
    "pkce": _CODE,
    "userinfo_url": _INTERACTIVE,
    "userinfo_fields": _INTERACTIVE,
    "device_authorization_url": ("device_code",),
    **EXTENSION_FIELDS_OF_GRANT,
}
"""Fields that only some grants read: set with another, they are a mistake worth naming."""
_NO_CLIENT_NEEDED = ("jwt_bearer", "token_exchange")


def _no_reserved_auth_params(value: dict[str, str]) -> dict[str, str]:
    clashes = sorted(RESERVED_AUTH_PARAMS & value.keys())
    if clashes:
        raise ValueError(f"must not set {', '.join(clashes)}: the flow sets them")
    return value


def _no_reserved(value: dict[str, SecretStr]) -> dict[str, SecretStr]:
    clashes = sorted(RESERVED_PARAMS & value.keys())
    if clashes:
        raise ValueError(f"must not set {', '.join(clashes)}: use the dedicated fields")
    return value


AuthParams = Annotated[dict[str, str], Before(json_object), Check(_no_reserved_auth_params)]


@block
class OAuth2AuthConfig(TokenLifecycleConfig, ExtensionGrantFields, Shaped):
    """OAuth2 token endpoint (RFC 6749): client credentials, password or refresh-token grant;
    a signed JWT (``jwt_bearer``, RFC 7523) or another token (``token_exchange``, RFC 8693)
    exchanged for one (no client needed: ``client_auth`` defaults to ``none``, or with a
    ``client_secret`` to ``client_secret_basic``); or a grant a person authorizes once, an
    authorization code or a device authorization (RFC 8628), renewed by refresh tokens."""

    type: Literal["oauth2"]
    grant: Literal[
        "client_credentials",
        "password",
        "refresh_token",
        "authorization_code",
        "device_code",
        "jwt_bearer",
        "token_exchange",
    ]
    issuer: EndpointURL | None = None  # discovery (RFC 8414 / OpenID) fills the endpoints
    token_url: EndpointURL | None = None
    refresh_url: EndpointURL | None = None  # default: token_url
    # The RFC 8628 device authorization endpoint (grant device_code).
    device_authorization_url: EndpointURL | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_auth: Literal[
        "client_secret_basic",
        "client_secret_post",
        "client_secret_jwt",
        "private_key_jwt",
        "tls_client_auth",
        "none",
    ] = "client_secret_basic"
    # The PEM key of private_key_jwt (loaded and checked by the build step).
    private_key: SecretStr | None = None
    key_id: str | None = None  # 'kid' of the private_key_jwt assertion
    signing_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    username: str | None = None
    password: SecretStr | None = None
    refresh_token: SecretStr | None = None  # the seed of the refresh_token grant
    grant_type: Annotated[str, Rules(min_length=1)] | None = None  # overrides the wire value
    scopes: list[str] | str | None = None
    scope_separator: str = " "
    audience: str | None = None
    # Added to the token request body.
    extra_params: Annotated[dict[str, SecretStr], Before(json_object), Check(_no_reserved)] = (
        dataclasses.field(default_factory=dict)
    )
    # Sent to the token endpoint.
    headers: Annotated[dict[HeaderName, SecretStr], Before(json_object)] = dataclasses.field(
        default_factory=dict
    )
    token_field: Literal["access_token", "id_token"] = "access_token"
    # The authorization-code flow (grant authorization_code).
    authorization_url: EndpointURL | None = None  # where the browser consents
    # Default: this proxy's {admin.prefix}/oauth/{name}/callback.
    redirect_uri: EndpointURL | None = None
    # Added to the authorization request.
    auth_params: AuthParams = dataclasses.field(default_factory=dict)
    # Authorization parameter -> query parameter of the start URL.
    auth_params_map: AuthParams = dataclasses.field(default_factory=dict)
    pkce: bool = True  # RFC 7636 S256 code challenge
    # The file for this connector's tokens, sealed (default: the token store).
    token_store: str | None = None
    userinfo_url: EndpointURL | None = None  # asked once who authorized
    # Paths in the userinfo answer naming the account.
    userinfo_fields: list[JsonPathField] = dataclasses.field(default_factory=list)
    configured: frozenset[str] = dataclasses.field(
        default=frozenset(), init=False, repr=False, compare=False
    )
    """The keys the config gave; a default is not a choice (discovery may pick a
    ``client_auth`` that was not configured)."""

    def settle(self, written: frozenset[str]) -> None:
        """What the grant needs, given what the config wrote."""
        object.__setattr__(self, "configured", written)
        if self.grant in _NO_CLIENT_NEEDED and "client_auth" not in written:
            # A signed assertion or a subject token says who asks; no client is needed.
            # Set quietly (not as if configured): discovery may still pick a method.
            if self.client_secret is None:
                object.__setattr__(self, "client_auth", "none")
        problem = self.extension_grant_problem(self.grant)
        if problem is not None:
            raise ValueError(problem)
        needed = {
            "client_credentials": ("client_id",),
            "password": ("username", "password"),
            "refresh_token": ("refresh_token",),
            "authorization_code": ("client_id", "authorization_url"),
            "device_code": ("client_id", "device_authorization_url"),
            "jwt_bearer": (),
            "token_exchange": (),
        }[self.grant]
        if self.issuer is not None:  # discovery fills the endpoints
            discovered = ("device_authorization_url", "authorization_url")
            needed = tuple(n for n in needed if n not in discovered)
        elif self.token_url is None and self.service_account_file is None:
            needed += ("token_url",)  # a service-account file names its token_uri
        needed += {
            "client_secret_basic": ("client_id", "client_secret"),
            "client_secret_post": ("client_id", "client_secret"),
            "client_secret_jwt": ("client_id", "client_secret"),
            "private_key_jwt": ("client_id", "private_key"),
            "tls_client_auth": ("client_id",),
            "none": (),
        }[self.client_auth]
        missing = sorted({name for name in needed if getattr(self, name) is None})
        if missing:
            raise ValueError(
                f"grant {self.grant!r} with client_auth {self.client_auth!r} needs "
                + ", ".join(missing)
            )
        misplaced = sorted(written & FIELDS_OF_GRANT.keys())
        misplaced = [name for name in misplaced if self.grant not in FIELDS_OF_GRANT[name]]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: not used by grant {self.grant!r}")

    @property
    def interactive(self) -> bool:
        """Authorized once by a person (a browser, ``tokenproxy authorize``), then by
        refresh tokens."""
        return self.grant in ("authorization_code", "device_code")

    @property
    def scope(self) -> str | None:
        if self.scopes is None or isinstance(self.scopes, str):
            return self.scopes
        return self.scope_separator.join(self.scopes) or None


OAuth2Auth = Annotated[OAuth2AuthConfig, SHAPE]
"""The ``oauth2`` block where a config holds one (its grant's rules run)."""
