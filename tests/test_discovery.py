"""Provider discovery: ``issuer`` fills the endpoints (RFC 8414, then OpenID Discovery)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import StartProxy, oauth2_connector, status_and_message
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream


def issuer_only(upstream: RecordingUpstream, idp: FakeIdP, **auth: Any) -> dict[str, Any]:
    connector = oauth2_connector(upstream.url, idp.url, **auth)
    connector["auth"].pop("token_url")
    connector["auth"]["issuer"] = idp.url
    return {"connectors": {"api": connector}}


def metadata(idp: FakeIdP, **fields: Any) -> dict[str, Any]:
    return {
        "issuer": idp.url,
        "token_endpoint": f"{idp.url}/discovered/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        **fields,
    }


@pytest.mark.parametrize(
    "well_known", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
)
async def test_the_issuer_fills_the_token_endpoint_and_a_supported_client_auth(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    well_known: str,
) -> None:
    idp.metadata[well_known] = metadata(idp)
    proxy = await start_proxy(issuer_only(upstream, idp), clock)
    assert (await status_and_message(client, proxy.url))[0] == 200
    clock.advance(400)
    assert (await status_and_message(client, proxy.url))[0] == 200
    token_calls = [c for c in idp.calls if c["method"] == "POST"]
    assert [c["path"] for c in token_calls] == ["/discovered/token"] * 2
    assert "client_secret" in token_calls[0]["form"]  # the method the provider supports
    assert "Authorization" not in token_calls[0]["headers"]
    assert [c["path"] for c in idp.calls if c["method"] == "GET"][-1] == well_known  # once


async def test_explicit_fields_win_over_discovered_ones(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    idp.metadata["/.well-known/openid-configuration"] = metadata(idp)
    config = issuer_only(upstream, idp, client_auth="client_secret_basic")
    config["connectors"]["api"]["auth"]["token_url"] = f"{idp.url}/token"
    proxy = await start_proxy(config, clock)
    assert (await status_and_message(client, proxy.url))[0] == 200
    (token_call,) = [c for c in idp.calls if c["method"] == "POST"]
    assert token_call["path"] == "/token" and "Authorization" in token_call["headers"]


@pytest.mark.parametrize(
    ("served", "message"),
    [
        ({"issuer": "https://evil.example"}, "names another issuer than the one configured"),
        ({"token_endpoint": "http://evil.example/token"}, "gives an unusable token_endpoint"),
        (None, "the provider publishes no metadata under its issuer"),
    ],
    ids=["other-issuer", "plain-http-endpoint", "no-metadata"],
)
async def test_untrustworthy_or_missing_metadata_is_refused(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    served: dict[str, Any] | None,
    message: str,
) -> None:
    if served is not None:
        idp.metadata["/.well-known/openid-configuration"] = metadata(idp, **served)
    proxy = await start_proxy(issuer_only(upstream, idp), clock)
    status, text = await status_and_message(client, proxy.url)
    assert status == 502 and message in text
    assert upstream.requests == []
