"""Canary values for every secret never appear in logs, error bodies or admin output (§5.F)."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartProxy, raw_request
from tests.fakes import RawUpstream, RecordingUpstream

TOKEN = "tok_CANARY_static_7f3a"
QUERY_TOKEN = "tok_CANARY_query_51c2"
PASSWORD = "sec_CANARY_password_99"
CLIENT_KEY = "sec_CANARY_clientkey_42"
ADMIN_TOKEN = "sec_CANARY_admin_0c0c"
CANARIES = (TOKEN, QUERY_TOKEN, PASSWORD, CLIENT_KEY, ADMIN_TOKEN, "CANARY")


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
                    f"GET /ok/x HTTP/1.1\r\nHost: x\r\nX-Leak: {TOKEN}\x01\r\n\r\n".encode(),
                )
            ).decode()
        )
    finally:
        await truncating.close()

    assert len(seen) == 13
    # The upstreams did get the credentials: the canaries were really in play.
    sent = [v for r in upstream.requests for _, v in r["headers"]]
    assert f"Bearer {TOKEN}" in sent
    everything = "\n".join(seen) + caplog.text
    for canary in CANARIES:
        assert canary not in everything
    assert "upstream_reset_mid_body" in caplog.text
