"""The authorization-code flow against the fake provider, through real sockets: a browser's
start and callback (PKCE and ``redirect_uri`` checked by the provider), the sealed state
cookie, single use, provider errors, restarts with the store, rotation and ``invalid_grant``,
and ``tokenproxy authorize`` from a terminal (loopback listener and pasted address)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.demo.idp import DEMO_USERNAME
from tests.conftest import (
    RunningProxy,
    StartProxy,
    WriteConfig,
    connector_status,
    eventually,
    free_port,
    http_status,
    oauth2_connector,
    status_and_message,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer

ACCOUNT = f"{DEMO_USERNAME}@example.test"


def code_config(upstream: RecordingUpstream, idp: FakeIdP, **auth: Any) -> dict[str, Any]:
    settings = {
        "grant": "authorization_code",
        "authorization_url": f"{idp.url}/authorize",
        "userinfo_url": f"{idp.url}/userinfo",
        "scopes": ["read", "offline_access"],
        **auth,
    }
    return {"connectors": {"api": oauth2_connector(upstream.url, idp.url, **settings)}}


@dataclass
class Page:
    status: int
    location: str | None
    text: str
    headers: Any


class Browser:
    """What a browser does for a person: keeps cookies (per host, by path) and follows
    nothing by itself, so each step of the flow can be looked at."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def open(self, url: str, **headers: str) -> Page:
        async with self.session.get(url, allow_redirects=False, headers=headers) as response:
            return Page(
                response.status,
                response.headers.get("Location"),
                await response.text(),
                response.headers,
            )

    async def consent(self, proxy: RunningProxy, query: str = "") -> tuple[URL, str]:
        """Start, let the provider answer; the authorization request and the callback URL
        (not opened yet)."""
        start = await self.open(f"{proxy.url}/_proxy/oauth/api/start{query}")
        assert start.status == 302 and start.location is not None, start.text
        provider = await self.open(start.location)
        assert provider.status == 302 and provider.location is not None, provider.text
        return URL(start.location), provider.location


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as session:
        yield Browser(session)


async def test_one_consent_then_the_connector_serves_and_renews(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(code_config(upstream, idp), clock)
    start_url = f"{proxy.url}/_proxy/oauth/api/start"

    async def says_needs_authorization() -> bool:  # at once: the store was looked at
        return (await connector_status(client, proxy))["state"] == "needs_authorization"

    await eventually(says_needs_authorization, within=2)
    assert idp.calls == []  # no provider was asked: there is nothing to ask with
    code, message = await status_and_message(client, proxy)
    assert code == 503 and f"not authorized: open {start_url} in a browser" in message
    status = await connector_status(client, proxy)
    assert status["state"] == "needs_authorization" and status["start_url"] == start_url

    request, callback = await browser.consent(proxy)
    sent = request.query
    redirect_uri = f"{proxy.url}/_proxy/oauth/api/callback"
    assert sent["response_type"] == "code" and sent["client_id"] == "demo-client"
    assert sent["redirect_uri"] == redirect_uri and sent["code_challenge_method"] == "S256"
    assert sent["scope"] == "read offline_access" and len(sent["state"]) >= 43
    page = await browser.open(callback)
    assert page.status == 200 and f"authorized as {ACCOUNT}" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    exchange = next(call for call in idp.calls if call["form"].get("grant_type"))
    assert exchange["form"]["redirect_uri"] == redirect_uri
    assert len(exchange["form"]["code_verifier"]) >= 43  # the fake checked it against S256

    assert await http_status(client, proxy) == 200
    (token,) = upstream.header_values("Authorization")
    assert token.removeprefix("Bearer ") not in page.text
    status = await connector_status(client, proxy)
    assert status["state"] == "valid" and status["account"] == ACCOUNT
    clock.advance(400)  # expired: the refresh token from the code renews it
    assert await http_status(client, proxy) == 200
    assert idp.grants[-1] == "refresh_token" and not idp.reuse_detected


@pytest.mark.parametrize(
    ("auth", "start_query", "expected"),
    [
        ({"scopes": ["a", "b"], "scope_separator": ","}, "", {"scope": "a,b"}),
        ({"scopes": "a b"}, "", {"scope": "a b"}),
        (
            {"auth_params": {"access_type": "offline", "prompt": "consent"}},
            "",
            {"access_type": "offline", "prompt": "consent"},
        ),
        (
            {"auth_params_map": {"custom_param": "access_type"}},
            "?access_type=offline&other=ignored",
            {"custom_param": "offline"},
        ),
        ({"pkce": False}, "", {"code_challenge": None}),
    ],
)
async def test_the_authorization_request(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    auth: dict[str, Any],
    start_query: str,
    expected: dict[str, str | None],
) -> None:
    proxy = await start_proxy(code_config(upstream, idp, **auth))
    request, callback = await browser.consent(proxy, start_query)
    for name, value in expected.items():
        assert request.query.get(name) == value, name
    assert "other" not in request.query
    assert (await browser.open(callback)).status == 200  # the provider took it whole
    assert await http_status(client, proxy) == 200


@pytest.mark.parametrize("mischief", ["state", "no_cookie", "replay", "iss", "expired"])
async def test_a_forged_or_replayed_callback_changes_nothing(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    clock: FakeClock,
    mischief: str,
) -> None:
    idp.issuer = "https://elsewhere.example" if mischief == "iss" else None
    config = code_config(upstream, idp, **({"issuer": idp.url} if mischief == "iss" else {}))
    if mischief == "iss":
        idp.metadata["/.well-known/oauth-authorization-server"] = {
            "issuer": idp.url,
            "token_endpoint": f"{idp.url}/token",
        }
    proxy = await start_proxy(config, clock)
    _, callback = await browser.consent(proxy)
    if mischief == "replay":
        cookies = browser.session.cookie_jar.filter_cookies(URL(callback))
        assert (await browser.open(callback)).status == 200
        browser.session.cookie_jar.update_cookies(cookies)  # the cookie, replayed with it
    elif mischief == "state":
        callback = str(URL(callback).update_query(state="forged"))
    elif mischief == "no_cookie":
        browser.session.cookie_jar.clear()  # another browser than the one that started
    elif mischief == "expired":
        clock.advance(601)
    exchanges = [c for c in idp.calls if c["form"].get("grant_type") == "authorization_code"]
    page = await browser.open(callback)
    assert page.status == 400 and "was not authorized" in page.text
    reason = {
        "state": "state mismatch",
        "no_cookie": "this browser did not start this authorization",
        "replay": "used already",
        "iss": "another issuer",
        "expired": "expired",
    }[mischief]
    assert reason in page.text
    after = [c for c in idp.calls if c["form"].get("grant_type") == "authorization_code"]
    assert after == exchanges  # no code was redeemed for the forged or replayed answer
    if mischief != "replay":
        assert (await status_and_message(client, proxy))[0] == 503


@pytest.mark.parametrize(
    ("provider", "status", "reason"),
    [
        ({"consent": {"error": "access_denied"}}, 400, "refused the authorization (access_denied)"),
        ({"script": [answer(400, {"error": "invalid_grant"})]}, 502, "invalid_grant"),
        ({"script": [answer(503)]}, 502, "answered 503"),
    ],
)
async def test_a_refused_authorization_shows_why_and_changes_nothing(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    provider: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    proxy = await start_proxy(code_config(upstream, idp))
    idp.consent = provider.get("consent", {})
    _, callback = await browser.consent(proxy)
    idp.script = provider.get("script", [])
    page = await browser.open(callback)
    assert page.status == status and reason in page.text, page.text
    assert f"{proxy.url}/_proxy/oauth/api/start" in page.text  # where to try again
    assert (await status_and_message(client, proxy))[0] == 503
    assert (await connector_status(client, proxy))["state"] == "needs_authorization"


async def test_restart_keeps_the_authorization_and_invalid_grant_asks_for_it_again(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = code_config(upstream, idp)
    config["connectors"]["api"]["warmup"] = True
    proxy = await start_proxy(config, clock)
    _, callback = await browser.consent(proxy)
    assert (await browser.open(callback)).status == 200
    await proxy.server.stop()
    clock.advance(400)
    proxy = await start_proxy(config, clock)  # a restart: no new consent

    async def ready() -> bool:
        return await http_status(client, proxy, "/_proxy/ready") == 200

    await eventually(ready, within=5)
    assert (await connector_status(client, proxy))["account"] == ACCOUNT
    assert idp.grants.count("authorization_code") == 1 and not idp.reuse_detected
    for family in idp.families.values():
        family.revoked = True  # the person revoked the access at the provider
    clock.advance(400)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            code, message = await status_and_message(client, proxy)
            assert code == 503 and "not authorized: open" in message
            clock.advance(2)
    status = await connector_status(client, proxy)
    assert status["state"] == "needs_authorization" and status["account"] is None
    assert not await ready()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "api" in r.message]
    assert sum("not authorized" in r.getMessage() for r in warnings) == 1
    _, callback = await browser.consent(proxy)  # authorized again: serving again
    assert (await browser.open(callback)).status == 200
    assert await http_status(client, proxy) == 200


async def test_start_moves_to_the_callback_origin_and_guards_browsers(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    browser: Browser,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(code_config(upstream, idp))
    localhost = f"http://localhost:{proxy.port}/_proxy/oauth/api/start?access_type=x"
    moved = await browser.open(localhost)  # the cookie must be set where the callback lands
    assert moved.status == 302
    assert moved.location == f"{proxy.url}/_proxy/oauth/api/start?access_type=x"
    cross = await browser.open(
        f"{proxy.url}/_proxy/oauth/api/start", **{"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status == 403  # another site cannot start an authorization
    start = await browser.open(f"{proxy.url}/_proxy/oauth/api/start")
    assert (
        "HttpOnly" in start.headers["Set-Cookie"] and "SameSite=Lax" in start.headers["Set-Cookie"]
    )
    assert "Path=/_proxy/oauth/api" in start.headers["Set-Cookie"]
    assert start.location is not None
    provider = await browser.open(start.location)
    assert provider.location is not None
    # The provider sends the browser back from its own site: cross-site by design.
    page = await browser.open(provider.location, **{"Sec-Fetch-Site": "cross-site"})
    assert page.status == 200


@pytest.mark.parametrize(
    "clients", [{"allow_cidrs": ["10.0.0.0/8"]}, {"api_keys": ["sec_client_key_of_32_chars"]}]
)
async def test_clients_decide_who_may_authorize(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    browser: Browser,
    clients: dict[str, Any],
) -> None:
    """Authorizing decides whose account every client's requests use: it is guarded like
    the rest of the admin endpoints, loopback included (another container of the pod)."""
    config = code_config(upstream, idp)
    config["clients"] = clients
    proxy = await start_proxy(config)
    for step in ("start", "callback"):
        page = await browser.open(f"{proxy.url}/_proxy/oauth/api/{step}?state=x&code=y")
        assert page.status == 403, step
    assert not any(call.get("browser_flow") for call in idp.calls)
    if "api_keys" in clients:  # a client that has the key may
        key = {"Proxy-Authorization": "Bearer sec_client_key_of_32_chars"}
        assert (await browser.open(f"{proxy.url}/_proxy/oauth/api/start", **key)).status == 302


@pytest.mark.parametrize("answer_by", ["listener", "paste"])
async def test_authorize_from_a_terminal(
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    browser: Browser,
    answer_by: str,
) -> None:
    redirect_uri = (
        f"http://127.0.0.1:{free_port()}/callback"
        if answer_by == "listener"
        else "https://tokenproxy.example/_proxy/oauth/api/callback"  # not reachable here
    )
    path = write_config(code_config(upstream, idp, redirect_uri=redirect_uri))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "authorize", "api", "-c", str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not (lines and lines[-1].startswith("Waiting for")):
                lines.append((await process.stdout.readline()).decode().strip())
            url = next(line for line in lines if line.startswith(f"{idp.url}/authorize"))
            provider = await browser.open(url)
            assert provider.location is not None and provider.location.startswith(redirect_uri)
            if answer_by == "listener":
                assert f"redirect to {redirect_uri}" in lines[-1]
                # A reload racing the first answer: both pages come at once, one redeem. Both
                # connections are open before either asks (the listener ends with the first
                # answer, so a second connect this process got to late would be refused).
                callback = URL(provider.location)
                assert callback.host is not None and callback.port is not None
                try:
                    tabs = [
                        await asyncio.open_connection(callback.host, callback.port) for _ in "ab"
                    ]
                except OSError as exc:  # the listener is gone: show what the command said
                    process.kill()
                    said = "\n".join(lines) + (await process.stdout.read()).decode()
                    raise AssertionError(f"the listener refused ({exc}):\n{said}") from exc
                ask = f"GET {callback.raw_path_qs} HTTP/1.1\r\nHost: {callback.raw_authority}\r\n"
                for _, writer in tabs:
                    writer.write(f"{ask}Connection: close\r\n\r\n".encode())
                texts = [(await reader.read()).decode() for reader, _ in tabs]
                for _, writer in tabs:
                    writer.close()
                assert sorted("Authorization received" in text for text in texts) == [False, True]
                assert sorted("over already" in text for text in texts) == [False, True]
            else:
                process.stdin.write(b"not a url\n" + provider.location.encode() + b"\n")
                await process.stdin.drain()
            rest = (await process.stdout.read()).decode()
            assert await process.wait() == 0, "\n".join(lines) + rest
    finally:  # a failure here must not leave the process (and its pipes) to the next test
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert f"api: authorized as {ACCOUNT}; the refresh token is kept in the token store" in rest
    if answer_by == "paste":
        assert "that is not the address the provider redirected to" in rest
    from tests.test_cli import tokenproxy

    token = await asyncio.to_thread(tokenproxy, "token", "api", "-c", str(path))
    assert token.returncode == 0 and "read from the token store" in token.stdout


async def test_authorize_with_nothing_to_wait_for_ends_at_once(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    """No loopback redirect_uri to listen on, and no terminal to paste into."""
    redirect_uri = "https://tokenproxy.example/_proxy/oauth/api/callback"
    path = write_config(code_config(upstream, idp, redirect_uri=redirect_uri))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "authorize", "api", "-c", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(20):
        output, _ = await process.communicate()
    assert process.returncode == 1
    assert b"stdin is closed and the redirect_uri is not a loopback address" in output


async def test_the_consent_endpoints_answer_only_for_code_connectors(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy({"connectors": {"api": oauth2_connector(upstream.url, idp.url)}})
    for path in ("/_proxy/oauth/api/start", "/_proxy/oauth/nope/callback"):
        async with client.get(proxy.url + path, allow_redirects=False) as response:
            assert response.status == 404
            assert (await response.json())["error"] == "no_route"


async def test_discovery_fills_the_endpoints_and_userinfo_needs_openid(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
) -> None:
    idp.metadata["/.well-known/openid-configuration"] = {
        "issuer": idp.url,
        "authorization_endpoint": f"{idp.url}/authorize",
        "token_endpoint": f"{idp.url}/token",
        "userinfo_endpoint": f"{idp.url}/userinfo",
    }
    idp.issuer = idp.url  # RFC 9207: the callback names it, and it matches
    auth = oauth2_connector(
        upstream.url, idp.url, grant="authorization_code", issuer=idp.url, token_url=None,
        scopes=["openid", "offline_access"], userinfo_fields=["profile.name", "$.email"],
    )  # fmt: skip
    del auth["auth"]["token_url"]
    proxy = await start_proxy({"connectors": {"api": auth}})
    _, callback = await browser.consent(proxy)
    page = await browser.open(callback)
    assert page.status == 200 and f"as Demo User, {ACCOUNT}" in page.text
    assert await http_status(client, proxy) == 200

    async def asked_userinfo() -> bool:
        return any(call["path"] == "/userinfo" for call in idp.calls)

    await eventually(asked_userinfo, within=1)


async def test_no_token_code_or_verifier_leaks_from_the_consent_path(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy(code_config(upstream, idp), clock)
    start = await browser.open(f"{proxy.url}/_proxy/oauth/api/start")
    assert start.location is not None
    provider = await browser.open(start.location)
    assert provider.location is not None
    seen = [start.headers["Set-Cookie"], start.location]
    for path in (provider.location, provider.location):  # the second: a replay
        seen.append((await browser.open(path)).text)
    clock.advance(400)
    assert await http_status(client, proxy) == 200  # renewed: a rotated refresh token too
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        seen.append(await response.text())
    exchange = next(c for c in idp.calls if c["form"].get("grant_type") == "authorization_code")
    secrets = [
        URL(provider.location).query["code"],
        exchange["form"]["code_verifier"],
        "demo-secret",
        *idp.issued,
        *idp.families,
    ]
    state = tmp_path / ".tokenproxy"  # the config file beside it holds the client secret
    on_disk = [p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()]
    assert any(p.name.startswith("token-") for p in state.iterdir())
    for secret in secrets:
        for where, text in [("logs", caplog.text), ("disk", "".join(on_disk))]:
            assert secret not in text, where
        assert not any(secret in text for text in seen)


async def test_a_token_store_file_of_its_own(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    own = tmp_path / "tokens" / "api.json"
    config = code_config(upstream, idp, token_store=str(own))
    proxy = await start_proxy(config, clock)
    _, callback = await browser.consent(proxy)
    assert (await browser.open(callback)).status == 200
    sealed = own.read_text()
    assert sealed.startswith("enc:v1:") and not any(t in sealed for t in idp.issued)
    assert own.stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / ".tokenproxy").glob("token-*.json"))  # not in state_dir
    await proxy.server.stop()
    clock.advance(400)
    restarted = await start_proxy(config, clock)
    assert await http_status(client, restarted) == 200  # renewed from that file
    assert idp.grants.count("authorization_code") == 1 and not idp.reuse_detected


def test_a_token_store_file_is_refused_for_a_fleet(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    from tests.test_config import problems_of

    config = code_config(upstream, idp, token_store="/var/lib/x.json")
    config["cache"] = {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}
    (problem,) = problems_of(write_config(config))
    assert problem.startswith("connectors.api.auth.token_store: a file is not shared")


async def test_a_fleet_shares_one_consent(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started on one replica, called back on another (a load balancer's choice), replayed
    on the first: one code redeemed, and both replicas serve with its tokens."""
    from proxy.secrets.envelope import KEY_ENV, generate_key

    monkeypatch.setenv(KEY_ENV, generate_key())  # the fleet's one master key
    replicas = []
    for name in ("a", "b"):  # two machines: a state_dir each, Redis between them
        config = code_config(upstream, idp)
        config["cache"] = {"backend": "redis", "url": redis_url, "key_prefix": prefix}
        config["state_dir"] = str(tmp_path / name)
        replicas.append(await start_proxy(config))
    first, second = replicas
    _, callback = await browser.consent(first)
    cookies = browser.session.cookie_jar.filter_cookies(URL(callback))
    on_second = str(URL(callback).with_port(second.port))
    page = await browser.open(on_second)
    assert page.status == 200 and f"authorized as {ACCOUNT}" in page.text
    browser.session.cookie_jar.update_cookies(cookies)  # the same answer, to the first
    replayed = await browser.open(callback)
    assert replayed.status == 400 and "used already" in replayed.text
    assert await http_status(client, second) == 200  # it took the callback

    async def first_serves() -> bool:  # within its one-second look at the store
        return await http_status(client, first) == 200

    await eventually(first_serves, within=3)
    assert (await connector_status(client, first))["account"] == ACCOUNT
    assert idp.grants.count("authorization_code") == 1
    assert "refresh_token" not in idp.grants  # the first adopted the token, fetched nothing


async def test_a_browser_that_leaves_mid_callback_loses_nothing(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
) -> None:
    proxy = await start_proxy(code_config(upstream, idp))
    _, callback = await browser.consent(proxy)
    idp.delay = 0.5  # the exchange takes longer than the browser waits
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await browser.open(callback)

    async def authorized() -> bool:
        return (await connector_status(client, proxy))["state"] == "valid"

    await eventually(authorized, within=3)  # the spent code's tokens were installed
    assert await http_status(client, proxy) == 200


async def test_a_new_consent_without_a_refresh_token_drops_the_old_one(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
    clock: FakeClock,
) -> None:
    """The old refresh token may be another account's: it must not come back at renewal."""
    proxy = await start_proxy(code_config(upstream, idp), clock)
    _, callback = await browser.consent(proxy)
    assert (await browser.open(callback)).status == 200
    idp.overrides = {"refresh_token": None}
    _, callback = await browser.consent(proxy)
    page = await browser.open(callback)
    assert page.status == 200 and "gave no refresh token" in page.text
    clock.advance(400)
    assert (await status_and_message(client, proxy))[0] == 503
    assert "refresh_token" not in idp.grants


async def test_what_the_provider_says_is_shown_escaped_and_an_unrelated_callback_ends_nothing(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    browser: Browser,
) -> None:
    proxy = await start_proxy(code_config(upstream, idp))
    _, callback = await browser.consent(proxy)
    # Another site sends the browser to the callback with a state of its own: refused,
    # and the authorization under way is not ended by it.
    forged = await browser.open(
        f"{proxy.url}/_proxy/oauth/api/callback?state=x&code=y", **{"Sec-Fetch-Site": "cross-site"}
    )
    assert forged.status == 400 and "state mismatch" in forged.text
    repeated = await browser.open(callback + "&code=second")
    assert repeated.status == 400 and "repeats a parameter" in repeated.text
    assert (await browser.open(callback)).status == 200
    idp.consent = {"error": "<b>x</b>", "error_description": "<script>alert(1)</script>\x1b[2J"}
    _, callback = await browser.consent(proxy)
    page = await browser.open(callback)
    assert "<script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "(invalid)" in page.text and "\x1b" not in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]  # none at all


async def test_a_provider_that_promises_iss_must_send_it(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    browser: Browser,
) -> None:
    idp.metadata["/.well-known/oauth-authorization-server"] = {
        "issuer": idp.url,
        "authorization_endpoint": f"{idp.url}/authorize",
        "token_endpoint": f"{idp.url}/token",
        "authorization_response_iss_parameter_supported": True,
    }
    auth = code_config(upstream, idp, issuer=idp.url)
    proxy = await start_proxy(auth)
    _, callback = await browser.consent(proxy)  # the fake sends no iss: a mix-up, perhaps
    page = await browser.open(callback)
    assert page.status == 400 and "does not name its issuer" in page.text


@pytest.mark.parametrize(
    ("host", "callback", "same"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080/cb", True),
        ("127.0.0.1", "http://127.0.0.1:80/cb", True),  # browsers leave the default port out
        ("[::1]:8080", "http://[::1]:8080/cb", True),
        ("LOCALHOST:8080", "http://localhost:8080/cb", True),
        ("localhost:8080", "http://127.0.0.1:8080/cb", False),
        ("127.0.0.1:8081", "http://127.0.0.1:8080/cb", False),
    ],
)
def test_the_start_knows_when_it_is_on_the_callbacks_origin(
    host: str, callback: str, same: bool
) -> None:
    from types import SimpleNamespace

    from proxy.consent.web import _same_host

    assert _same_host(SimpleNamespace(host=host), URL(callback)) is same  # type: ignore[arg-type]
