"""The extension grants against oidc-provider (a certified OpenID provider from npm):
``jwt_bearer`` assertions verified by ``jose`` (not the PyJWT that signs them) for each
algorithm, and a chained ``token_exchange`` whose every subject token the provider finds
active. The grants are registered in tests/oidc/server.mjs the way oidc-provider documents
for grants it does not ship; its own client authentication and parameter parsing run."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from pytest_aiohttp import AiohttpRawServer

from tests.conftest import StartProxy
from tests.fakes import signing_key
from tests.test_oidc_provider import (  # the provider's fixtures, shared
    SECRET,
    IntrospectingUpstream,
    StartProvider,
    provider_available,
    start_provider,
)

__all__ = ["provider_available", "start_provider"]  # fixtures used by name

ISSUER = "svc-account@tokenproxy.test"
INTROSPECTOR = {
    "client_id": "resource-server",
    "client_secret": SECRET,
    "grant_types": [],
    "redirect_uris": [],
    "response_types": [],
}
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def client(client_id: str, grant: str, **fields: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "grant_types": [grant],
        "redirect_uris": [],
        "response_types": [],
        "scope": "api:read",
        **fields,
    }


def key_pair(alg: str) -> tuple[str, str]:
    """(private PKCS#8 PEM, public SPKI PEM) for ``alg``."""
    private, public = signing_key(alg)
    spki = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, spki.decode()


async def seen(session: aiohttp.ClientSession, issuer: str) -> dict[str, Any]:
    async with session.get(f"{issuer}/test/seen") as response:
        found: dict[str, Any] = await response.json()
        return found


async def serve_introspected(
    aiohttp_raw_server: AiohttpRawServer, issuer: str, session: aiohttp.ClientSession
) -> tuple[IntrospectingUpstream, str]:
    resource = IntrospectingUpstream(issuer, "resource-server")
    resource.session = session
    upstream = await aiohttp_raw_server(resource, access_log=None)
    return resource, str(upstream.make_url("")).rstrip("/")


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
async def test_jwt_bearer_assertions_verify_with_another_jose_library(
    start_provider: StartProvider,
    start_proxy: StartProxy,
    aiohttp_raw_server: AiohttpRawServer,
    alg: str,
) -> None:
    private, public = key_pair(alg)
    registered = client("bearer-app", JWT_BEARER, token_endpoint_auth_method="none")
    issuer = await start_provider(
        [registered, INTROSPECTOR], 600, bearerIssuers={ISSUER: {"key": public, "alg": alg}}
    )
    async with aiohttp.ClientSession() as session:
        resource, upstream = await serve_introspected(aiohttp_raw_server, issuer, session)
        auth = {
            "type": "oauth2",
            "grant": "jwt_bearer",
            "token_url": f"{issuer}/token",
            "client_id": "bearer-app",
            "scopes": ["api:read"],
            "assertion": {"issuer": ISSUER, "private_key": private, "signing_alg": alg},
        }
        proxy = await start_proxy(
            {"connectors": {"api": {"route": "/api", "upstream": upstream, "auth": auth}}}
        )
        for _ in range(2):  # a second token: a second assertion, its own jti
            async with session.get(f"{proxy.url}/api/items") as response:
                assert response.status == 200, await response.text()
            async with session.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
                assert response.status == 200, await response.text()
        accepted = await seen(session, issuer)
    assert resource.verdicts == [True, True]
    assert len(accepted["assertions"]) == 3 and len(set(accepted["jti"])) == 3
    claims = accepted["assertions"][0]
    assert (claims["iss"], claims["sub"], claims["aud"]) == (ISSUER, ISSUER, f"{issuer}/token")
    assert claims["exp"] - claims["iat"] == 300


async def test_a_chained_token_exchange_always_presents_an_active_subject_token(
    start_provider: StartProvider,
    start_proxy: StartProxy,
    aiohttp_raw_server: AiohttpRawServer,
) -> None:
    login = client("login-app", "client_credentials", client_secret=SECRET)
    exchanger = client("exchange-app", TOKEN_EXCHANGE, client_secret=SECRET)
    issuer = await start_provider([login, exchanger, INTROSPECTOR], 600)
    async with aiohttp.ClientSession() as session:
        resource, upstream = await serve_introspected(aiohttp_raw_server, issuer, session)
        base = {"type": "oauth2", "token_url": f"{issuer}/token", "client_secret": SECRET}
        connectors = {
            "api": {
                "route": "/api",
                "upstream": upstream,
                "auth": {
                    **base,
                    "grant": "token_exchange",
                    "client_id": "exchange-app",
                    "subject_connector": "login",
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "audience": "https://api.tokenproxy.test",
                    "resource": ["https://api.tokenproxy.test/a", "https://api.tokenproxy.test/b"],
                },
            },
            "login": {
                "route": "/login",
                "upstream": upstream,
                "auth": {**base, "grant": "client_credentials", "client_id": "login-app"},
            },
        }
        proxy = await start_proxy({"connectors": connectors})
        for _ in range(2):  # the subject renewed in between: exchanged once more
            for _ in range(3):
                async with session.get(f"{proxy.url}/api/items") as response:
                    assert response.status == 200, await response.text()
            async with session.post(f"{proxy.url}/_proxy/connectors/login/refresh") as response:
                assert response.status == 200, await response.text()
        accepted = await seen(session, issuer)
    assert resource.verdicts == [True] * 6
    exchanges = accepted["exchanges"]
    assert len(exchanges) == 2 and exchanges[0]["subject_jti"] != exchanges[1]["subject_jti"]
    assert exchanges[0]["subject_client"] == "login-app"
    assert exchanges[0]["audience"] == "https://api.tokenproxy.test"
    assert exchanges[0]["resource"] == [
        "https://api.tokenproxy.test/a",
        "https://api.tokenproxy.test/b",
    ]
