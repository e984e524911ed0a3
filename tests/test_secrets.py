"""Canary values for every secret never appear in logs, error bodies or admin output."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.demo.idp import DEMO_CLIENT_ID
from proxy.secrets.envelope import KEY_ENV, MasterKeys, generate_key
from tests.conftest import StartProxy, oauth2_connector, raw_request
from tests.fakes import FakeClock, FakeIdP, RawUpstream, RecordingUpstream, answer

TOKEN = "tok_CANARY_static_7f3a"
QUERY_TOKEN = "tok_CANARY_query_51c2"
PASSWORD = "sec_CANARY_password_99"
CLIENT_KEY = "sec_CANARY_clientkey_42"
ADMIN_TOKEN = "sec_CANARY_admin_0c0c"
COOKIE = "sec_CANARY_client_cookie_5d"  # the client's own secrets pass, unlogged
CANARIES = (TOKEN, QUERY_TOKEN, PASSWORD, CLIENT_KEY, ADMIN_TOKEN, COOKIE, "CANARY")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_secret_leaks_on_any_path(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"http://127.0.0.1:{_closed_port()}"
    truncating = await RawUpstream(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"short"]
    ).start()
    static = {"type": "static", "token": TOKEN}
    proxy = await start_proxy(
        {
            "admin": {"token": ADMIN_TOKEN},
            "clients": {"api_keys": [CLIENT_KEY]},
            "connectors": {
                "ok": {"route": "/ok", "upstream": upstream.url, "auth": static},
                "basic": {
                    "route": "/basic",
                    "upstream": upstream.url,
                    "auth": {"type": "basic", "username": "u", "password": PASSWORD},
                },
                "dead": {"route": "/dead", "upstream": dead, "auth": static},
                "dead-query": {
                    "route": "/dq",
                    "upstream": dead,
                    "auth": {"type": "static", "token": QUERY_TOKEN, "query_param": "key"},
                },
                "broken": {
                    "route": "/broken",
                    "upstream": f"http://127.0.0.1:{truncating.port}",
                    "auth": static,
                },
            },
        }
    )
    key = {"Proxy-Authorization": f"Bearer {CLIENT_KEY}"}
    seen: list[str] = []

    async def call(method: str, path: str, headers: dict[str, str] | None = None) -> None:
        async with client.request(method, proxy.url + path, headers=headers) as response:
            try:
                body = await response.text()
            except aiohttp.ClientPayloadError:
                body = "(aborted)"
            seen.append(f"{response.status} {dict(response.headers)} {body}")

    async def plain(request: web.BaseRequest) -> web.StreamResponse:
        # Not the echo: an upstream that reflects headers shows the token by design (C13).
        return web.Response(text="fine")

    async def dying(request: web.BaseRequest) -> web.StreamResponse:
        raise ConnectionResetError  # the upstream dies while answering

    upstream.respond = plain
    try:
        await call("GET", f"/ok/x?token={TOKEN}", key)
        await call("GET", "/ok/c", {**key, "Cookie": f"session={COOKIE}", "X-Api-Key": COOKIE})
        await call("POST", "/basic/x", key)
        await call("GET", f"/dead/x?q={TOKEN}", key)
        await call("GET", "/dq/x", key)
        await call("GET", "/broken/x", key)
        await call("GET", "/ok/x", {"Proxy-Authorization": f"Bearer {CLIENT_KEY}x"})
        await call("GET", f"/ok/%2e%2e/x?{TOKEN}", key)
        await call("GET", "/nowhere", key)
        await call("GET", "/_proxy/connectors")
        await call("GET", "/_proxy/ready")
        await call("POST", "/_proxy/connectors", {"Authorization": f"Bearer {ADMIN_TOKEN}x"})
        upstream.respond = dying
        await call("GET", "/ok/x", key)
        seen.append(
            (
                await raw_request(
                    proxy.port,
                    f"GET /ok/x HTTP/1.1\r\nHost: localhost\r\n"
                    f"X-Leak: {TOKEN}\x01\r\n\r\n".encode(),
                )
            ).decode()
        )
    finally:
        await truncating.close()

    assert len(seen) == 14
    assert any(COOKIE in v for r in upstream.requests for _, v in r["headers"])
    assert '"GET /ok/c HTTP/1.1" 200' in caplog.text  # the access line: no header in it
    # The upstreams did get the credentials: the canaries were really in play.
    sent = [v for r in upstream.requests for _, v in r["headers"]]
    assert f"Bearer {TOKEN}" in sent
    everything = "\n".join(seen) + caplog.text
    for canary in CANARIES:
        assert canary not in everything
    assert "upstream_reset_mid_body" in caplog.text


CLIENT_SECRET = "sec_CANARY_client_secret_3e"
USER_PASSWORD = "sec_CANARY_user_password_8d"
ISSUED = "tok_CANARY_issued_access_1b"
ISSUED_REFRESH = "tok_CANARY_issued_refresh_6a"
TOKEN_CANARIES = (CLIENT_SECRET, USER_PASSWORD, ISSUED, ISSUED_REFRESH, "CANARY")


async def test_no_secret_of_a_token_connector_leaks(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    write_config: Callable[[dict[str, Any]], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    idp.clients[DEMO_CLIENT_ID] = CLIENT_SECRET
    idp.users["svc"] = USER_PASSWORD
    idp.overrides.update(access_token=ISSUED, refresh_token=ISSUED_REFRESH)
    master_key = generate_key()  # the secret is configured encrypted, as in production
    monkeypatch.setenv(KEY_ENV, master_key)
    encrypted_secret = MasterKeys.from_environment().encrypt(CLIENT_SECRET)
    auth = {
        "grant": "password",
        "username": "svc",
        "password": USER_PASSWORD,
        "client_secret": encrypted_secret,
    }
    config = {"connectors": {"api": oauth2_connector(upstream.url, idp.url, **auth)}}
    proxy = await start_proxy(config, clock)
    seen: list[str] = []

    async def plain(request: web.BaseRequest) -> web.StreamResponse:
        if (
            upstream.header_values("Authorization") == [f"Bearer {ISSUED}"]
            and len(upstream.requests) == 3
        ):
            return web.Response(status=401, text="expired")
        return web.Response(text="fine")

    upstream.respond = plain

    async def call(path: str = "/api/x") -> None:
        async with client.get(proxy.url + path) as response:
            seen.append(f"{response.status} {dict(response.headers)} {await response.text()}")

    await call()  # password grant
    clock.advance(400)
    await (
        call()
    )  # refresh with the (unknown to the IdP) refresh token: invalid_grant, then password
    await call()  # the upstream rejects the token once: forced refresh and replay
    idp.script.extend(
        [
            answer(
                401, {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"}
            ),
            answer(200, f"<html>{USER_PASSWORD}</html>"),
            answer(500, f"trace: password={USER_PASSWORD}"),
        ]
    )
    for _ in range(3):
        clock.advance(400)
        await call()
    await call("/_proxy/connectors")
    await call("/_proxy/ready")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "token", "api", "-c", str(write_config(config))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    seen.append(result.stdout + result.stderr)

    assert len(idp.calls) >= 7 and ISSUED in " ".join(map(str, upstream.requests))
    everything = "\n".join(seen) + caplog.text
    basic = base64.b64encode(f"{DEMO_CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    for canary in (*TOKEN_CANARIES, master_key, encrypted_secret, basic):
        assert canary not in everything


async def test_no_secret_of_a_custom_token_request_leaks(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = {
        "type": "custom",
        "username": "svc",
        "password": USER_PASSWORD,
        "client_secret": CLIENT_SECRET,
        "token_request": {
            "url": f"{idp.url}/login",
            "body_format": "json",
            "body": {"user": "{{username}}", "secret": "{{password}}"},
            "headers": {"X-Key": "{{client_secret}}"},
        },
        "access_token_path": "data.token",
    }
    proxy = await start_proxy(
        {"connectors": {"api": {"route": "/api", "upstream": upstream.url, "auth": auth}}}, clock
    )
    upstream.respond = answer(200, "fine")
    idp.script.extend(
        [
            answer(200, {"data": {}, "echo": USER_PASSWORD}),  # path missing
            answer(200, f"<html>{CLIENT_SECRET}</html>"),  # not JSON
            answer(401, {"error": "invalid_client", "detail": USER_PASSWORD}),
            answer(200, {"data": {"token": f"{ISSUED}\r\nX-Evil: 1"}}),  # unusable token
            answer(200, {"data": {"token": ISSUED}}),
        ]
    )
    seen = []
    for _ in range(5):
        async with client.get(f"{proxy.url}/api/x") as response:
            seen.append(f"{response.status} {dict(response.headers)} {await response.text()}")
        clock.advance(400)
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        seen.append(await response.text())
    assert [line[:3] for line in seen[:5]] == ["502", "502", "502", "502", "200"]
    assert idp.calls[0]["json"] == {"user": "svc", "secret": USER_PASSWORD}  # really in play
    everything = "\n".join(seen) + caplog.text
    for canary in TOKEN_CANARIES:
        assert canary not in everything
