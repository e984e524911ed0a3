"""Who may use the proxy: client addresses and client keys."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    RunningProxy,
    StartProxy,
    connector,
    oauth2_connector,
    raw_request,
    status_of,
)
from tests.fakes import FakeIdP, RecordingUpstream

KEY = "client-key-0123"


async def _proxy(
    start_proxy: StartProxy, upstream: RecordingUpstream, clients: dict[str, Any]
) -> RunningProxy:
    return await start_proxy({"clients": clients, "connectors": {"api": connector(upstream.url)}})


@pytest.mark.parametrize(
    ("cidrs", "allowed"),
    [(["127.0.0.0/8"], True), (["127.0.0.1/32", "10.0.0.0/8"], True), (["10.0.0.0/8"], False)],
)
async def test_client_address_allowlist_uses_the_socket_peer(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    cidrs: list[str],
    allowed: bool,
) -> None:
    proxy = await _proxy(start_proxy, upstream, {"allow_cidrs": cidrs})
    spoofed = {"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3", "Forwarded": "for=10.1.2.3"}
    async with client.get(f"{proxy.url}/api/x", headers=spoofed) as response:
        assert response.status == (200 if allowed else 403)
        if not allowed:
            assert (await response.json())["error"] == "forbidden"
    assert len(upstream.requests) == (1 if allowed else 0)


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ([("Proxy-Authorization", f"Bearer {KEY}")], True),
        ([("Proxy-Authorization", f"bearer {KEY}")], True),
        ([("Proxy-Authorization", "Bearer other-key")], True),
        ([], False),
        ([("Proxy-Authorization", f"Bearer {KEY.upper()}")], False),
        ([("Proxy-Authorization", f"Bearer {KEY}x")], False),
        ([("Proxy-Authorization", f"Bearer  {KEY}")], False),
        ([("Proxy-Authorization", f"Basic {KEY}")], False),
        (
            [("Proxy-Authorization", f"Bearer {KEY}"), ("Proxy-Authorization", f"Bearer {KEY}")],
            False,
        ),
        ([("Authorization", f"Bearer {KEY}")], False),
    ],
)
async def test_client_keys(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    headers: list[tuple[str, str]],
    allowed: bool,
) -> None:
    proxy = await _proxy(start_proxy, upstream, {"api_keys": [KEY, "other-key"]})
    async with client.get(f"{proxy.url}/api/x", headers=headers) as response:
        assert response.status == (200 if allowed else 403)
    assert len(upstream.requests) == (1 if allowed else 0)
    if allowed:  # the key is never forwarded
        assert upstream.header_values("Proxy-Authorization") == []


@pytest.mark.parametrize(
    ("path", "status"),
    [("/nowhere", 403), ("/api/x", 403), ("/_proxy/health", 200), ("/_proxy/connectors", 403)],
)
async def test_key_is_checked_before_routing_and_for_admin_but_probes(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    path: str,
    status: int,
) -> None:
    proxy = await _proxy(start_proxy, upstream, {"api_keys": [KEY]})
    async with client.get(proxy.url + path) as response:
        assert response.status == status
    assert upstream.requests == []


async def test_default_listener_is_loopback_only(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})
    addresses = proxy.server.addresses
    assert [address[0] for address in addresses] == ["127.0.0.1"]
    answer = await raw_request(
        proxy.port, b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/_proxy/connectors/api/refresh"), ("GET", "/_proxy/connectors")],
)
async def test_admin_endpoints_need_the_client_key_without_an_admin_token(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    method: str,
    path: str,
) -> None:
    """Without it, any peer could make the proxy hammer the identity provider."""
    proxy = await start_proxy(
        {
            "clients": {"allow_cidrs": ["127.0.0.0/8"], "api_keys": [KEY]},
            "connectors": {"api": oauth2_connector(upstream.url, idp.url)},
        }
    )
    async with client.request(method, proxy.url + path) as response:
        assert response.status == 403
    assert idp.calls == []
    keyed = {"Proxy-Authorization": f"Bearer {KEY}"}
    async with client.request(method, proxy.url + path, headers=keyed) as response:
        assert response.status == 200


async def test_probes_from_loopback_need_nothing_even_outside_allow_cidrs(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await _proxy(start_proxy, upstream, {"allow_cidrs": ["10.0.0.0/8"], "api_keys": [KEY]})
    for probe in ("/_proxy/health", "/_proxy/ready", "/_proxy/health?verbose=1"):
        async with client.get(proxy.url + probe) as response:
            assert response.status == 200, probe
    async with client.get(proxy.url + "/_proxy/connectors") as response:
        assert response.status == 403


async def test_a_keyless_flood_is_refused_cheaply_and_never_reaches_the_token_endpoint(
    start_proxy: StartProxy, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    """Row G8: 2,000 requests without a key, 100 connections at a time (each refusal closes
    its connection): every one 403, not one token request (no amplification against the
    provider), nothing upstream."""
    api = oauth2_connector(upstream.url, idp.url)
    proxy = await start_proxy({"clients": {"api_keys": [KEY]}, "connectors": {"api": api}})
    request = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n"

    async def flood(count: int) -> list[int]:
        return [status_of(await raw_request(proxy.port, request)) for _ in range(count)]

    statuses = [
        s for batch in await asyncio.gather(*(flood(20) for _ in range(100))) for s in batch
    ]
    assert statuses == [403] * 2_000
    assert idp.calls == [] and upstream.requests == []
