"""Against a certified OpenID provider (oidc-provider from the npm registry, run by Node.js):
client credentials with every client-authentication method it certifies, and an upstream
that introspects each token it receives, over short real lifetimes.

Our fakes agree with our own reading of the RFCs; this provider does not have to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpRawServer

from proxy.tokens.oauth2 import basic_client_credentials
from tests.conftest import StartProxy, device_flow, free_port

HERE = Path(__file__).resolve().parent / "oidc"
SECRET = "oidc-test-secret-of-at-least-32-bytes"


def _unavailable() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider is not installed (make test installs it with npm)"
    return None


@pytest.fixture
def provider_available() -> None:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the oidc-provider tests: {reason}")
        pytest.skip(reason)


StartProvider = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_provider(provider_available: None) -> AsyncIterator[StartProvider]:
    """Start oidc-provider with these clients and this access-token lifetime (and more
    settings of server.mjs); its issuer URL."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(clients: list[dict[str, Any]], ttl: int, **more: Any) -> str:
        """``more``: further settings of server.mjs (``bearerIssuers``)."""
        settings = json.dumps({"clients": clients, "ttl": ttl, **more})
        process = await asyncio.create_subprocess_exec(
            "node",
            str(HERE / "server.mjs"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "OIDC_TEST_CONFIG": settings},
        )
        processes.append(process)
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("listening on "), line
        return f"http://127.0.0.1:{int(line.split()[-1])}"

    yield start
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


class IntrospectingUpstream:
    """A resource server that asks the provider (RFC 7662) whether each token is active."""

    def __init__(self, issuer: str, client_id: str) -> None:
        self.issuer, self.client_id = issuer, client_id
        self.verdicts: list[bool] = []
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        assert self.session is not None
        async with self.session.post(
            f"{self.issuer}/token/introspection",
            data={"token": token},
            headers={"Authorization": basic_client_credentials(self.client_id, SECRET)},
        ) as response:
            active = bool((await response.json()).get("active"))
        self.verdicts.append(active)
        return web.json_response({"active": active}, status=200 if active else 401)


def rsa_client_key() -> tuple[str, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return pem, {**public, "kid": "k1", "use": "sig", "alg": "RS256"}


@pytest.mark.parametrize(
    "client_auth",
    ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt"],
)
async def test_client_credentials_with_every_client_authentication(
    start_provider: StartProvider,
    start_proxy: StartProxy,
    aiohttp_raw_server: AiohttpRawServer,
    client: aiohttp.ClientSession,
    client_auth: str,
) -> None:
    registered: dict[str, Any] = {
        "client_id": "tokenproxy",
        "grant_types": ["client_credentials"],
        "redirect_uris": [],
        "response_types": [],
        "token_endpoint_auth_method": client_auth,
        "scope": "api:read",
    }
    auth: dict[str, Any] = {
        "type": "oauth2",
        "grant": "client_credentials",
        "client_id": "tokenproxy",
        "client_auth": client_auth,
        "scopes": ["api:read"],
    }
    if client_auth == "private_key_jwt":
        pem, public = rsa_client_key()
        registered["jwks"] = {"keys": [public]}
        auth.update(private_key=pem, key_id="k1")
    else:
        registered["client_secret"] = SECRET
        auth["client_secret"] = SECRET
    introspector = {
        "client_id": "resource-server",
        "client_secret": SECRET,
        "grant_types": [],
        "redirect_uris": [],
        "response_types": [],
    }
    issuer = await start_provider([registered, introspector], 2)
    auth["token_url"] = f"{issuer}/token"
    resource = IntrospectingUpstream(issuer, "resource-server")
    upstream = await aiohttp_raw_server(resource, access_log=None)
    async with aiohttp.ClientSession() as session:
        resource.session = session
        api = {"route": "/api", "upstream": str(upstream.make_url("")).rstrip("/"), "auth": auth}
        proxy = await start_proxy({"connectors": {"api": api}})
        # Steady traffic for about 3 s: a 2 s token is usable for 1 s of it.
        for _ in range(15):
            async with client.get(f"{proxy.url}/api/orders") as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(0.2)
        async with client.get(f"{proxy.url}/_proxy/connectors") as response:
            (described,) = (await response.json())["connectors"]
    assert resource.verdicts == [True] * 15  # no token handed out after it expired
    assert 2 <= described["fetches"] <= 5  # about one per usable second, not one per request
    assert described["failures"] == 0


async def test_device_authorization_then_refresh_tokens_against_the_certified_provider(
    start_provider: StartProvider,
    start_proxy: StartProxy,
    aiohttp_raw_server: AiohttpRawServer,
) -> None:
    """RFC 8628 as oidc-provider implements it (no interval given: we wait the default 5 s),
    its endpoints found by discovery, then refresh-token renewals, and a restart that
    resumes from the store."""
    from tests.fakes import RecordingUpstream

    device_grant = "urn:ietf:params:oauth:grant-type:device_code"
    client = {
        "client_id": "device-client",
        "client_secret": SECRET,
        "grant_types": [device_grant, "refresh_token"],
        "response_types": [],
        "redirect_uris": [],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    issuer = await start_provider([client], 600)
    upstream = RecordingUpstream()
    upstream.url = str((await aiohttp_raw_server(upstream, access_log=None)).make_url(""))
    auth = {
        "type": "oauth2",
        "grant": "device_code",
        "issuer": issuer,  # discovery finds the device and token endpoints
        "client_id": "device-client",
        "client_secret": SECRET,
        "scopes": ["openid", "offline_access"],
    }
    config = {"connectors": {"api": {"route": "/api", "upstream": upstream.url, "auth": auth}}}
    proxy = await start_proxy(config)
    manager = proxy.server.runtime.connectors["api"].authenticator  # type: ignore[union-attr]
    approvals: list[asyncio.Task[None]] = []

    async def approve(user_code: str) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{issuer}/test/approve", params={"user_code": user_code}) as response,
        ):
            assert response.status == 200, await response.text()

    def say(line: str) -> None:
        if "enter the code " in line:
            approvals.append(asyncio.create_task(approve(line.rsplit(" ", 1)[-1])))

    async with asyncio.timeout(20):
        await manager.authorize(device_flow(say))  # type: ignore[attr-defined]
    await asyncio.gather(*approvals)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the device's token, then one from a refresh-token grant
            async with session.get(f"{proxy.url}/api/x") as response:
                assert response.status == 200
            async with session.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
                assert response.status == 200, await response.text()
        await proxy.server.stop()
        restarted = await start_proxy(config)
        async with session.post(f"{restarted.url}/_proxy/connectors/api/refresh") as response:
            assert response.status == 200, await response.text()  # the stored refresh token
        async with session.get(f"{restarted.url}/api/x") as response:
            assert response.status == 200
    tokens = {dict(r["headers"])["Authorization"] for r in upstream.requests}
    assert len(tokens) == 3


@pytest.mark.parametrize("deny", [False, True])
async def test_authorization_code_with_a_browser_consent(
    start_provider: StartProvider,
    start_proxy: StartProxy,
    aiohttp_raw_server: AiohttpRawServer,
    deny: bool,
) -> None:
    """Code + PKCE as oidc-provider implements it: endpoints by discovery, its login and
    consent forms, the RFC 9207 ``iss`` checked, who authorized from its userinfo, rotation on
    every refresh, and a restart that resumes from the store."""
    from tests.oidc_consent import consent

    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/_proxy/oauth/api/callback"
    registered = {
        "client_id": "code-client",
        "client_secret": SECRET,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    issuer = await start_provider([registered], 600)
    upstream = IntrospectingUpstream(issuer, "code-client")
    server = await aiohttp_raw_server(upstream, access_log=None)
    auth = {
        "type": "oauth2",
        "grant": "authorization_code",
        "issuer": issuer,  # discovery: authorization, token and userinfo endpoints
        "client_id": "code-client",
        "client_secret": SECRET,
        "scopes": ["openid", "email", "offline_access", "api:read"],
        "auth_params": {"prompt": "consent"},  # OpenID: offline_access needs a consent prompt
    }
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "connectors": {
            "api": {"route": "/api", "upstream": str(server.make_url("")), "auth": auth}
        },
    }
    proxy = await start_proxy(config)
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        aiohttp.ClientSession() as upstream.session,
        aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as browser,
    ):
        async with browser.get(
            f"{proxy.url}/_proxy/oauth/api/start", allow_redirects=False
        ) as start:
            assert start.status == 302, await start.text()
            location = start.headers["Location"]
        callback = await consent(location, redirect_uri, login="alice", deny=deny)
        async with browser.get(callback, allow_redirects=False) as page:
            text = await page.text()
        if deny:
            assert page.status == 400 and "(access_denied)" in text, text
            async with browser.get(f"{proxy.url}/api/x") as response:
                assert response.status == 503
            return
        assert page.status == 200 and "authorized as alice@example.test" in text, text
        for _ in range(2):  # the code's token, then one from each rotated refresh token
            async with browser.get(f"{proxy.url}/api/x") as response:
                assert response.status == 200
            async with browser.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
                assert response.status == 200, await response.text()
        await proxy.server.stop()
        restarted = await start_proxy(config)
        async with browser.post(f"{restarted.url}/_proxy/connectors/api/refresh") as response:
            assert response.status == 200, await response.text()  # the newest refresh token
            assert (await response.json())["account"] == "alice@example.test"
        async with browser.get(f"{restarted.url}/api/x") as response:
            assert response.status == 200
    assert upstream.verdicts == [True, True, True]


def sign_in_and_consent(driver: Any, start_url: str, login: str) -> str:
    """What a person does: open the start URL, sign in, approve; the page's text at the end."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(driver, 10)
    driver.get(start_url)
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "login")))
    driver.find_element(By.NAME, "login").send_keys(login)
    driver.find_element(By.NAME, "password").send_keys("any password")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(expected_conditions.url_contains("/interaction/"))
    wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "button")))
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()  # the consent
    wait.until(expected_conditions.url_contains("/_proxy/oauth/api/callback"))
    return str(driver.find_element(By.TAG_NAME, "body").text)


async def test_a_person_consents_in_a_real_browser(
    chromium: Any,
    start_provider: StartProvider,
    start_proxy: StartProxy,
    aiohttp_raw_server: AiohttpRawServer,
    tmp_path: Path,
) -> None:
    port = free_port()
    redirect_uri = f"http://localhost:{port}/_proxy/oauth/api/callback"
    registered = {
        "client_id": "browser-client",
        "client_secret": SECRET,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [redirect_uri],
    }
    issuer = await start_provider([registered], 600)
    upstream = IntrospectingUpstream(issuer, "browser-client")
    server = await aiohttp_raw_server(upstream, access_log=None)
    auth = {
        "type": "oauth2",
        "grant": "authorization_code",
        "issuer": issuer,
        "client_id": "browser-client",
        "client_secret": SECRET,
        "scopes": ["openid", "email", "offline_access"],
        "auth_params": {"prompt": "consent"},
    }
    proxy = await start_proxy(
        {
            "listen": {"host": "localhost", "port": port},
            "connectors": {
                "api": {"route": "/api", "upstream": str(server.make_url("")), "auth": auth}
            },
        }
    )
    start_url = f"http://localhost:{port}/_proxy/oauth/api/start"
    text = await asyncio.to_thread(sign_in_and_consent, chromium, start_url, "carol")
    await asyncio.to_thread(chromium.save_screenshot, str(tmp_path / "callback.png"))
    assert "now authorized as carol@example.test" in text, text
    async with (
        aiohttp.ClientSession() as upstream.session,
        aiohttp.ClientSession(trust_env=False) as client,
        client.get(f"{proxy.url}/api/x") as response,
    ):
        assert response.status == 200
    assert upstream.verdicts == [True]
