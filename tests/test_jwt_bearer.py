"""``grant: jwt_bearer`` (RFC 7523 §2.1) end to end: the fake provider verifies every
assertion with the public key (signature, ``aud``, lifetime, a ``jti`` never seen before).
Keys and service-account files are made at test time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import validate
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.errors import ConfigError
from proxy.tokens.grant import RequestContext
from proxy.tokens.jwt_bearer import JWT_BEARER_GRANT, JwtBearerGrant, plan_assertion
from tests.conftest import (
    StartProxy,
    WriteConfig,
    check_config,
    connector,
    failed_then_served,
    warm,
)
from tests.fakes import (
    SERVICE_ACCOUNT_EMAIL,
    FakeClock,
    FakeIdP,
    RecordingUpstream,
    answer,
    service_account_file,
    signing_key,
)

ISSUER = "tokenproxy-signer"


def bearer_auth(idp: FakeIdP, alg: str = "RS256", **assertion: Any) -> dict[str, Any]:
    """A jwt_bearer auth block whose key the fake provider knows (for ``ISSUER``)."""
    pem, public = signing_key(alg)
    idp.bearer_keys[assertion.get("issuer", ISSUER)] = public
    return {
        "type": "oauth2",
        "grant": "jwt_bearer",
        "token_url": f"{idp.url}/token",
        "assertion": {"issuer": ISSUER, "private_key": pem, "signing_alg": alg, **assertion},
    }


async def start(
    start_proxy: StartProxy, upstream: RecordingUpstream, clock: FakeClock, **auth: Any
) -> Any:
    return await start_proxy({"connectors": {"api": connector(upstream.url, auth=auth)}}, clock)


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
@pytest.mark.parametrize("lifetime", [None, 60, 3600])
async def test_each_token_request_carries_a_new_verified_assertion(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    alg: str,
    lifetime: int | None,
) -> None:
    extra = {"lifetime": lifetime} if lifetime else {}
    auth = bearer_auth(idp, alg, key_id="k-2026", claims={"tenant": "acme", "n": 7}, **extra)
    proxy = await start(start_proxy, upstream, clock, **auth, scopes=["read", "write"])
    for _ in range(2):
        sent = await warm(client, proxy, upstream)
        assert sent.removeprefix("Bearer ") in idp.issued
        clock.advance(3600)  # past the token's life: the next request needs a new token
    first, second = idp.calls
    for call in (first, second):
        claims = call["grant_claims"]
        assert call["form"]["grant_type"] == JWT_BEARER_GRANT
        assert call["form"]["scope"] == "read write"  # RFC 7523 §2.1: scope in the form
        assert "client_id" not in call["form"] and "Authorization" not in call["headers"]
        assert call["grant_header"] == {"alg": alg, "typ": "JWT", "kid": "k-2026"}
        assert (claims["iss"], claims["sub"]) == (ISSUER, ISSUER)  # sub defaults to iss
        assert claims["aud"] == f"{idp.url}/token"
        assert claims["exp"] - claims["iat"] == (lifetime or 300)
        assert (claims["tenant"], claims["n"]) == ("acme", 7)
    assert second["grant_claims"]["iat"] == first["grant_claims"]["iat"] + 3600  # the clock's
    assert first["grant_claims"]["jti"] != second["grant_claims"]["jti"]


async def test_a_retry_signs_a_new_assertion(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(503, {"error": "temporarily_unavailable"}))
    proxy = await start(start_proxy, upstream, clock, **bearer_auth(idp))
    await warm(client, proxy, upstream)
    refused, accepted = idp.calls
    assert refused["form"]["assertion"] != accepted["form"]["assertion"]
    assert "grant_claims" in accepted  # the fake refuses a jti it saw: this one was new


async def test_a_replayed_assertion_is_refused_by_the_fake(idp: FakeIdP) -> None:
    """The fake's own check: a jti seen once is never accepted again."""
    config = validate(OAuth2AuthConfig, bearer_auth(idp))
    grant = JwtBearerGrant(config, "api", plan_assertion(config, "connectors.api.auth"))
    form = dict(grant.primary_request(RequestContext(now_wall=FakeClock().wall())).form or {})
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(2):
            async with session.post(f"{idp.url}/token", data=form) as response:
                statuses.append((response.status, (await response.json()).get("error")))
    assert statuses == [(200, None), (400, "invalid_grant")]


@pytest.mark.parametrize("delegate", [None, "admin@example.com"])
@pytest.mark.parametrize("given", ["path", "content"])
async def test_a_google_service_account_file_is_all_it_takes(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    delegate: str | None,
    given: str,
) -> None:
    pem, public = signing_key()
    idp.bearer_keys[SERVICE_ACCOUNT_EMAIL] = public
    key_file = service_account_file(tmp_path / "sa.json", f"{idp.url}/google/token", pem)
    auth: dict[str, Any] = {
        "type": "oauth2",
        "grant": "jwt_bearer",
        # A path, or the JSON itself (file: and ${VAR} give the content: CI secrets do).
        "service_account_file": str(key_file) if given == "path" else f"file:{key_file}",
        "scopes": ["https://www.googleapis.com/auth/a", "https://www.googleapis.com/auth/b"],
    }
    if delegate:
        auth["assertion"] = {"subject": delegate}
    proxy = await start(start_proxy, upstream, clock, **auth)
    await warm(client, proxy, upstream)
    (call,) = idp.calls
    assert call["path"] == "/google/token"  # token_url defaults to token_uri
    assert set(call["form"]) == {"grant_type", "assertion"}  # the scopes are in the claim
    claims = call["grant_claims"]
    assert claims["iss"] == SERVICE_ACCOUNT_EMAIL and call["grant_header"]["kid"] == "sa-key-1"
    assert claims["aud"] == f"{idp.url}/google/token"
    assert claims["scope"] == "https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b"
    assert claims.get("sub") == delegate  # only for domain-wide delegation


async def test_a_token_survives_a_restart_in_the_store(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
) -> None:
    auth = bearer_auth(idp)
    first = await start(start_proxy, upstream, clock, **auth)
    token = await warm(client, first, upstream)
    await first.server.stop()
    second = await start(start_proxy, upstream, clock, **auth)
    assert await warm(client, second, upstream) == token
    assert len(idp.calls) == 1


def _problems(write_config: WriteConfig, auth: dict[str, Any]) -> list[str]:
    path = write_config({"connectors": {"api": connector("https://api.example", auth=auth)}})
    with pytest.raises(ConfigError) as info:
        check_config(path)
    return info.value.problems


BASE = {"type": "oauth2", "grant": "jwt_bearer", "token_url": "https://idp.example/token"}


@pytest.mark.parametrize(
    ("assertion", "problem"),
    [
        ({"signing_alg": "ES256"}, "connectors.api.auth.assertion.private_key: does not fit "),
        ({"private_key": "nope"}, "connectors.api.auth.assertion.private_key: must be an unenc"),
        (
            {"claims": {"exp": 1, "sub": "x"}},
            "connectors.api.auth.assertion.claims: must not set sub, exp: the grant sets them",
        ),
        ({"lifetime": 3601}, "connectors.api.auth.assertion.lifetime: Input should be less"),
        (
            {"issuer": None},
            "connectors.api.auth: grant 'jwt_bearer' needs service_account_file or "
            "assertion.issuer",
        ),
    ],
)
def test_assertion_problems_name_the_field(
    write_config: WriteConfig, assertion: dict[str, Any], problem: str
) -> None:
    pem, _ = signing_key("RS256")
    given = {"issuer": "i", "private_key": pem, **assertion}
    auth = {**BASE, "assertion": {k: v for k, v in given.items() if v is not None}}
    (found,) = _problems(write_config, auth)
    assert found.startswith(problem), found
    assert pem not in found


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read "),
        (b"{not json", "is not JSON"),
        (b"[1]", "is not a JSON object"),
        ({"client_email": None, "private_key_id": None}, "missing client_email, private_key_id"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nSECRETcanary\n"}, "its private_key must"),
        ({"token_uri": "http://oauth2.example/token"}, "its token_uri must use https://"),
    ],
)
def test_service_account_file_problems_name_the_field_never_the_content(
    write_config: WriteConfig, tmp_path: Path, content: Any, problem: str
) -> None:
    pem, _ = signing_key()
    path = tmp_path / "sa.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        fields = {"token_uri": "https://oauth2.example/token", **content}
        service_account_file(path, fields.pop("token_uri"), pem, **fields)
    auth = {"type": "oauth2", "grant": "jwt_bearer", "service_account_file": str(path)}
    (found,) = _problems(write_config, auth)
    assert found.startswith(f"connectors.api.auth.service_account_file: {problem}"), found
    assert "SECRETcanary" not in found and pem not in found and str(path) not in found


def test_client_auth_is_none_unless_a_secret_is_given(write_config: WriteConfig) -> None:
    pem, _ = signing_key()
    auth = {**BASE, "assertion": {"issuer": "i", "private_key": pem}}
    plans = [
        check_config(write_config({"connectors": {"api": connector("https://a.example", auth=a)}}))
        for a in (auth, {**auth, "client_id": "c", "client_secret": "s"})
    ]
    methods = [getattr(plan.connectors["api"].auth, "client_auth", None) for plan in plans]
    assert methods == ["none", "client_secret_basic"]


async def test_keys_and_assertions_never_reach_logs_errors_or_status(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = bearer_auth(idp)
    idp.script.append(answer(400, {"error": "invalid_grant"}))  # one failure, reported
    proxy = await start(start_proxy, upstream, clock, **auth)
    texts = await failed_then_served(client, proxy, upstream, clock)
    pem_body = "".join(auth["assertion"]["private_key"].splitlines()[1:-1])
    secrets = [pem_body[:64], *(call["form"]["assertion"] for call in idp.calls)]
    for secret in secrets:
        for text in (caplog.text, *texts):
            assert secret not in text
