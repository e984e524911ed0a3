"""Provider discovery: an ``issuer`` fills the endpoints a connector did not name.

RFC 8414 metadata (``/.well-known/oauth-authorization-server``) first, OpenID Connect
Discovery (``/.well-known/openid-configuration``) if that is missing. The ``issuer`` in the
metadata must be the one configured (RFC 8414 §3.3: else an attacker's metadata could
redirect our credentials). Endpoints are held to the same rules as configured ones (https,
or http to loopback). Fetched on the first token request, over the token endpoint's TLS
settings, and kept for the process's life; a failure is an ordinary token-endpoint failure
(back-off, then tried again), so ``tokenproxy check`` never needs the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.oauth2 import token_endpoint_url
from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import TokenRequest, TokenSender, json_payload

WELL_KNOWN = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")

_ENDPOINTS = {
    "token_url": "token_endpoint",
    "authorization_url": "authorization_endpoint",
    "device_authorization_url": "device_authorization_endpoint",
    "userinfo_url": "userinfo_endpoint",
}


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    endpoints: dict[str, str]
    """Our field names (``token_url``, ...) to the provider's URLs."""
    client_auth_methods: tuple[str, ...]
    names_issuer_in_callbacks: bool = False
    """RFC 9207: its authorization answers carry ``iss``; one without it is refused."""

    @classmethod
    def read(cls, payload: dict[str, Any], expected_issuer: str) -> ProviderMetadata:
        issuer = payload.get("issuer")
        if issuer != expected_issuer:
            raise TokenEndpointError(
                "the provider's metadata names another issuer than the one configured",
                proxy_status="proxy_configuration_error",
            )
        endpoints = {}
        for ours, theirs in _ENDPOINTS.items():
            value = payload.get(theirs)
            if isinstance(value, str) and value:
                try:
                    endpoints[ours] = token_endpoint_url(value)
                except ValueError:
                    raise TokenEndpointError(
                        f"the provider's metadata gives an unusable {theirs}"
                    ) from None
        methods = payload.get("token_endpoint_auth_methods_supported")
        supported = (
            tuple(m for m in methods if isinstance(m, str)) if isinstance(methods, list) else ()
        )
        iss_promised = payload.get("authorization_response_iss_parameter_supported") is True
        return cls(issuer, endpoints, supported or ("client_secret_basic",), iss_promised)


async def discover(issuer: str, send: TokenSender) -> ProviderMetadata:
    """The provider's metadata; raises TokenEndpointError."""
    base = issuer.rstrip("/")
    last: TokenEndpointError | None = None
    for path in WELL_KNOWN:
        response = await send(TokenRequest(url=base + path, method="GET"))
        if response.status == 404:
            continue
        try:
            return ProviderMetadata.read(json_payload(response), issuer)
        except TokenEndpointError as exc:
            last = exc
            if response.status < 300:
                raise
    raise last or TokenEndpointError("the provider publishes no metadata under its issuer")
