"""The OAuth2 grants of RFC 6749 as pure request builders and response readers (no I/O).

Client authentication (``client_auth``), never in both the header and the body:

- ``client_secret_basic``: RFC 6749 §2.3.1, id and secret form-urlencoded *before* base64;
- ``client_secret_post``: id and secret in the body;
- ``client_secret_jwt`` / ``private_key_jwt``: an RFC 7523 assertion signed with the secret
  (HS256) or the private key (RS256, PS256, ES256), ``iss`` = ``sub`` = client id, ``aud`` =
  the token endpoint URL, a fresh ``jti`` and a 60-second life, made anew for every request;
- ``tls_client_auth``: RFC 8705, the TLS client certificate authenticates; only the id is sent;
- ``none``: a public client, only the id.

The extension grants (``jwt_bearer``, ``token_exchange``) are subclasses that add their own
parameters: :mod:`proxy.tokens.jwt_bearer`, :mod:`proxy.tokens.exchange`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import (
    FormValue,
    TokenRequest,
    TokenResponse,
    TokenSender,
    json_object_or_none,
    json_payload,
)
from proxy.tokens.grant import RequestContext
from proxy.tokens.model import (
    IssuedToken,
    bounded_lifetime,
    check_token_type,
    jwt_lifetime,
    parse_expires_in,
    usable_refresh_token,
    validate_token,
)

if TYPE_CHECKING:
    from proxy.consent.links import ConsentLinks
    from proxy.tokens.assertions import SigningKey
    from proxy.tokens.discovery import ProviderMetadata

_WIRE_GRANT = {
    "client_credentials": "client_credentials",
    "password": "password",
    "refresh_token": "refresh_token",
}


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Grants that can always ask for a new token without a refresh token.
_PRIMARY_GRANTS = ("client_credentials", "password", "jwt_bearer", "token_exchange")


# Our preference among what a provider supports, given the material configured.
_CLIENT_AUTH_PREFERENCE = (
    ("client_secret_basic", "client_secret"),
    ("client_secret_post", "client_secret"),
    ("private_key_jwt", "private_key"),
    ("client_secret_jwt", "client_secret"),
)


def _supported_client_auth(
    config: OAuth2AuthConfig, metadata: ProviderMetadata, fallback: str
) -> str:
    for method, material in _CLIENT_AUTH_PREFERENCE:
        if method in metadata.client_auth_methods and getattr(config, material) is not None:
            return method
    if "none" in metadata.client_auth_methods and config.client_secret is None:
        return "none"
    return fallback


def basic_client_credentials(client_id: str, client_secret: str) -> str:
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class OAuth2Grant:
    """Builds the token requests of one connector and reads the answers."""

    def __init__(
        self,
        config: OAuth2AuthConfig,
        connector: str,
        signing_key: SigningKey | None = None,
        links: ConsentLinks | None = None,
    ) -> None:
        """``signing_key``: the loaded ``private_key`` of a ``private_key_jwt`` client;
        ``links``: where a person authorizes a ``authorization_code`` connector."""
        self.config = config
        self.connector = connector
        self.links = links
        self._signing_key = signing_key
        self._metadata: ProviderMetadata | None = None
        self.client_auth: str = config.client_auth

    async def prepare(self, send: TokenSender) -> None:
        """Discover the provider once, if the connector names an ``issuer``."""
        config = self.config
        if config.issuer is None or self._metadata is not None:
            return
        from proxy.tokens.discovery import discover

        self._metadata = await discover(config.issuer, send)
        if "client_auth" not in config.configured:
            self.client_auth = _supported_client_auth(config, self._metadata, self.client_auth)

    def _endpoint(self, name: str) -> str:
        """A configured endpoint, else the discovered one."""
        value = getattr(self.config, name)
        if value is None and self._metadata is not None:
            value = self._metadata.endpoints.get(name)
        if value is None:
            raise TokenEndpointError(
                f"the provider's metadata has no {name.removesuffix('_url')} endpoint"
            )
        return str(value)

    @property
    def token_url(self) -> str:
        return self._endpoint("token_url")

    @property
    def refresh_url(self) -> str:
        return self.config.refresh_url or self.token_url

    @property
    def has_primary_grant(self) -> bool:
        """False when only a refresh token can get a token: the ``refresh_token`` grant, and
        the interactive grants, which a person authorizes once (a browser, ``tokenproxy
        authorize``)."""
        return self.config.grant in _PRIMARY_GRANTS

    def authorization_endpoint(self) -> str:
        return self._endpoint("authorization_url")

    def userinfo_endpoint(self) -> str | None:
        """The configured userinfo URL; a discovered one only when the scopes ask for
        OpenID (without ``openid`` a provider's userinfo refuses the token)."""
        if self.config.userinfo_url is not None:
            return self.config.userinfo_url
        scopes = (self.config.scope or "").replace(",", " ").split()
        if self._metadata is None or "openid" not in scopes:
            return None
        return self._metadata.endpoints.get("userinfo_url")

    @property
    def issuer(self) -> str | None:
        """The issuer a callback's ``iss`` must name (RFC 9207): the discovered one."""
        return None if self._metadata is None else self._metadata.issuer

    @property
    def issuer_in_callbacks(self) -> bool:
        """The provider promises ``iss`` in every authorization answer (RFC 9207 §3)."""
        return self._metadata is not None and self._metadata.names_issuer_in_callbacks

    def code_request(
        self, code: str, redirect_uri: str, verifier: str | None, current: RequestContext
    ) -> TokenRequest:
        """RFC 6749 §4.1.3 (with RFC 7636's verifier): redeem an authorization code once."""
        form = {
            "grant_type": self.config.grant_type or "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
        }
        if verifier is not None:
            form["code_verifier"] = verifier
        return self._request(self.token_url, form, current, replayable=False)

    def device_authorization_request(self, current: RequestContext) -> TokenRequest:
        """RFC 8628 §3.1: ask for a device code and a user code."""
        config = self.config
        form = {"scope": config.scope} if config.scope else {}
        if config.audience:
            form["audience"] = config.audience
        url = self._endpoint("device_authorization_url")
        return self._request(url, form, current, replayable=True)

    def device_token_request(self, device_code: str, current: RequestContext) -> TokenRequest:
        """RFC 8628 §3.4: poll the token endpoint with the device code."""
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
        return self._request(self.token_url, form, current, replayable=True)

    @property
    def keeps_refresh_tokens(self) -> bool:
        # RFC 6749 §4.4.3: no refresh token for client credentials; ignore one if sent. The
        # extension grants ignore theirs too (their modules' docstrings say why).
        return self.config.grant not in ("client_credentials", "jwt_bearer", "token_exchange")

    def refresh_rejected(self, error: TokenEndpointError) -> bool:
        # RFC 6749 §5.2: invalid_grant means the refresh token is invalid, expired or revoked.
        return error.oauth_error == "invalid_grant"

    def seed_refresh_token(self) -> str | None:
        token = self.config.refresh_token
        return token.get_secret_value() if token is not None else None

    def _client_auth(self, audience: str, now_wall: float) -> tuple[dict[str, str], dict[str, str]]:
        """(form fields, headers) that authenticate the client to ``audience``."""
        config = self.config
        client_id = config.client_id or ""
        secret = config.client_secret.get_secret_value() if config.client_secret else ""
        method = self.client_auth
        if method == "client_secret_basic":
            return {}, {"Authorization": basic_client_credentials(client_id, secret)}
        form = {"client_id": client_id} if client_id else {}
        if method == "client_secret_post":
            form["client_secret"] = secret
        elif method in ("client_secret_jwt", "private_key_jwt"):
            form["client_assertion_type"] = ASSERTION_TYPE
            from proxy.tokens.assertions import client_assertion  # PyJWT: only when used

            form["client_assertion"] = client_assertion(
                config, audience, now_wall, self._signing_key
            )
        return form, {}

    def _request(
        self,
        url: str,
        grant_form: Mapping[str, FormValue],
        context: RequestContext,
        replayable: bool,
    ) -> TokenRequest:
        config = self.config
        auth_form, auth_headers = self._client_auth(url, context.now_wall)
        form: dict[str, FormValue] = {**grant_form, **auth_form}
        for name, value in config.extra_params.items():
            form[name] = value.get_secret_value()
        headers = {name: value.get_secret_value() for name, value in config.headers.items()}
        headers.update(auth_headers)
        return TokenRequest(url=url, form=form, headers=headers, replayable=replayable)

    def primary_request(self, current: RequestContext) -> TokenRequest:
        config = self.config
        form = {"grant_type": config.grant_type or _WIRE_GRANT[config.grant]}
        if config.grant == "password":
            assert config.username is not None and config.password is not None
            form["username"] = config.username
            form["password"] = config.password.get_secret_value()
        if config.scope:
            form["scope"] = config.scope
        if config.audience:
            form["audience"] = config.audience
        return self._request(self.token_url, form, current, replayable=True)

    def refresh_request(self, current: RequestContext) -> TokenRequest | None:
        if current.refresh_token is None:
            return None
        form = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
        if self.config.grant == "refresh_token" and self.config.grant_type:
            form["grant_type"] = self.config.grant_type
        return self._request(self.refresh_url, form, current, replayable=False)

    def read(self, response: TokenResponse, *, refreshing: bool, now_wall: float) -> IssuedToken:
        """The token and its lifetime; raises TokenEndpointError."""
        config = self.config
        payload = json_payload(response)
        token = validate_token(payload.get(config.token_field), config.token_field)
        self.check_answer(payload)
        lifetime = parse_expires_in(payload.get("expires_in"))
        if lifetime is None:
            lifetime = jwt_lifetime(token, now_wall)
        if lifetime is None:
            lifetime = config.default_ttl
        return IssuedToken(token, bounded_lifetime(lifetime, config.max_ttl, self.connector))

    def check_answer(self, payload: dict[str, Any]) -> None:
        """Raise TokenEndpointError when the token is not one to use (its type)."""
        check_token_type(payload, custom_prefix=self.config.token_prefix.lower() != "bearer")

    def refresh_token_in(self, response: TokenResponse, *, refreshing: bool) -> str | None:
        payload = json_object_or_none(response) if self.keeps_refresh_tokens else None
        return None if payload is None else usable_refresh_token(payload.get("refresh_token"))
