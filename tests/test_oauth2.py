"""The OAuth2 grants on the wire: what the identity provider receives, and what it sends back."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest

from proxy.demo.idp import DEMO_CLIENT_ID, DEMO_PASSWORD, DEMO_USERNAME
from tests.conftest import StartOAuth2
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer

ODD_SECRET = "a:b+c/d=e f%\u00e9"


async def _get(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize(
    ("client_auth", "in_header", "in_form"),
    [
        ("client_secret_basic", True, set()),
        ("client_secret_post", False, {"client_id", "client_secret"}),
        ("none", False, {"client_id"}),
    ],
)
async def test_client_authentication_methods(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    client_auth: str,
    in_header: bool,
    in_form: set[str],
) -> None:
    idp.clients[DEMO_CLIENT_ID] = ODD_SECRET
    if client_auth == "none":
        idp.script.append(
            answer(200, {"access_token": "public-client-token", "token_type": "Bearer"})
        )
    auth = {"client_auth": client_auth, "client_secret": ODD_SECRET}
    proxy = await start_oauth2(**auth)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    call = idp.calls[0]
    assert call["path"] == "/token"
    assert {"client_id", "client_secret"} & call["form"].keys() == in_form
    if in_header:
        # RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
        pair = f"{quote_plus(DEMO_CLIENT_ID)}:{quote_plus(ODD_SECRET)}"
        assert (
            call["headers"]["Authorization"] == "Basic " + base64.b64encode(pair.encode()).decode()
        )
    else:
        assert "Authorization" not in call["headers"]
    if "client_secret" in in_form:
        assert call["form"]["client_secret"] == ODD_SECRET
    assert upstream.header_values("Authorization")[0].startswith("Bearer ")


async def test_client_credentials_request_fields(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    auth = {
        "scopes": ["read", "write"],
        "scope_separator": ",",
        "audience": "https://api.example.com",
        "extra_params": '{"resource": "urn:x", "tenant": 42}',
        "headers": {"X-Tenant": "t-1"},
    }
    proxy = await start_oauth2(**auth)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    call = idp.calls[0]
    assert call["form"] == {
        "grant_type": "client_credentials",
        "scope": "read,write",
        "audience": "https://api.example.com",
        "resource": "urn:x",
        "tenant": "42",
    }
    assert call["headers"]["X-Tenant"] == "t-1"
    assert call["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    issued = upstream.header_values("Authorization")[0].removeprefix("Bearer ")
    assert issued in idp.issued


@pytest.mark.parametrize(("scopes", "sent"), [("a b", "a b"), (["a", "b"], "a b"), ([], None)])
async def test_scopes_as_string_or_list(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    scopes: Any,
    sent: str | None,
) -> None:
    proxy = await start_oauth2(scopes=scopes)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    assert idp.calls[0]["form"].get("scope") == sent


async def test_password_grant_with_override_refresh_url_and_rotation(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    idp.expires_in = 100
    auth = {
        "grant": "password",
        "username": DEMO_USERNAME,
        "password": DEMO_PASSWORD,
        "refresh_url": f"{idp.url}/token?via=refresh",
    }
    proxy = await start_oauth2(**auth)
    for _ in range(3):
        assert await _get(client, f"{proxy.url}/api/x") == 200
        clock.advance(100)  # expire the token: the next request must renew
    assert idp.grants == ["password", "refresh_token", "refresh_token"]
    assert [call["query"] for call in idp.calls] == ["", "via=refresh", "via=refresh"]
    assert idp.calls[0]["form"]["username"] == DEMO_USERNAME
    assert idp.calls[0]["form"]["password"] == DEMO_PASSWORD
    # Each refresh presents the newest (rotated) refresh token; reuse would be detected.
    assert not idp.reuse_detected
    assert len({call["form"]["refresh_token"] for call in idp.calls[1:]}) == 2
    tokens = [value for value in (r["headers"] for r in upstream.requests)]
    assert len({dict(h)["Authorization"] for h in tokens}) == 3


async def test_grant_type_override_is_sent_on_the_wire(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(200, {"access_token": "vendor-token", "token_type": "bearer"}))
    auth = {
        "grant": "password",
        "username": "u",
        "password": "p",
        "grant_type": "urn:vendor:password",
    }
    proxy = await start_oauth2(**auth)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    assert idp.grants == ["urn:vendor:password"]
    assert upstream.header_values("Authorization") == ["Bearer vendor-token"]


async def test_password_grant_falls_back_when_the_refresh_token_is_rejected(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = {"grant": "password", "username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    proxy = await start_oauth2(**auth)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    idp.script.append(answer(400, {"error": "invalid_grant"}))
    clock.advance(400)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    assert idp.grants == ["password", "refresh_token", "password"]
    assert caplog.text.count("renewal failed (invalid_grant); the refresh token was dropped") == 1


async def test_refresh_token_grant_needs_a_new_seed_after_invalid_grant(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    auth = {"grant": "refresh_token", "refresh_token": idp.seed_refresh_token()}
    proxy = await start_oauth2(**auth)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    idp.script.append(answer(400, {"error": "invalid_grant", "error_description": "revoked"}))
    clock.advance(400)
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 502
        body = await response.json()
    assert body["message"] == "no valid refresh token: this connector needs a new refresh token"
    # No retry loop: the next request during back-off does not reach the provider.
    assert await _get(client, f"{proxy.url}/api/x") == 503
    assert idp.grants == ["refresh_token", "refresh_token"]
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        (described,) = (await response.json())["connectors"]
    assert described["state"] == "needs_refresh_token"
    assert described["last_error"] == "invalid_grant"


async def test_client_credentials_ignore_a_refresh_token(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    idp.overrides["refresh_token"] = "should-be-ignored"
    proxy = await start_oauth2()
    assert await _get(client, f"{proxy.url}/api/x") == 200
    clock.advance(400)
    assert await _get(client, f"{proxy.url}/api/x") == 200
    assert idp.grants == ["client_credentials", "client_credentials"]


async def test_id_token_can_be_the_bearer(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    idp.overrides["id_token"] = "the.id.token"
    proxy = await start_oauth2(token_field="id_token")
    assert await _get(client, f"{proxy.url}/api/x") == 200
    assert upstream.header_values("Authorization") == ["Bearer the.id.token"]


@pytest.mark.parametrize("unusable", [{"expires_in": "soon"}, {"access_token": None}])
async def test_a_rotation_in_an_unusable_answer_is_kept_and_reuse_never_happens(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    unusable: dict[str, Any],
) -> None:
    """The provider rotated the refresh token in a 200 whose other fields are unusable: the
    old one is revoked, so the next renewal must present the new one (RFC 9700 §4.14)."""
    proxy = await start_oauth2(grant="refresh_token", refresh_token=idp.seed_refresh_token())
    assert await _get(client, f"{proxy.url}/api/x") == 200
    idp.overrides.update(unusable)
    clock.advance(400)
    assert await _get(client, f"{proxy.url}/api/x") == 502
    idp.overrides.clear()
    clock.advance(5)  # past the back-off
    assert await _get(client, f"{proxy.url}/api/x") == 200
    assert idp.grants == ["refresh_token"] * 3
    assert not idp.reuse_detected
