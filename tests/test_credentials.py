"""Each static credential type and injection style, as the upstream receives it."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.conftest import StartProxy, connector
from tests.fakes import RecordingUpstream


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "static", "token": "abc.DEF-123"}, "Authorization", "Bearer abc.DEF-123"),
        ({"type": "static", "token": "abc", "token_prefix": ""}, "Authorization", "abc"),
        ({"type": "static", "token": "abc", "token_prefix": "Token"}, "Authorization", "Token abc"),
        (
            {"type": "static", "token": "k-1", "header": "X-API-Key", "token_prefix": ""},
            "X-API-Key",
            "k-1",
        ),
        (
            {"type": "basic", "username": "svc", "password": "pä:ss w/rd"},
            "Authorization",
            "Basic " + base64.b64encode("svc:pä:ss w/rd".encode()).decode(),
        ),
    ],
)
async def test_header_injection(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    auth: dict[str, Any],
    header: str,
    expected: str,
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, auth=auth)}})
    client_headers = {"Authorization": "Bearer from-client", header: "from-client"}
    async with client.get(f"{proxy.url}/api/x", headers=client_headers) as response:
        assert response.status == 200
    assert upstream.header_values(header) == [expected]
    if header != "Authorization":
        assert upstream.header_values("Authorization") == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "access_token=t%2Bk%2Fn"),
        ("a=1&b=%2F", "a=1&b=%2F&access_token=t%2Bk%2Fn"),
        ("access_token=client-junk&a=1", "a=1&access_token=t%2Bk%2Fn"),
        ("access%5Ftoken=client-junk&a=1", "a=1&access_token=t%2Bk%2Fn"),
    ],
)
async def test_query_parameter_injection_replaces_a_client_value(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    query: str,
    expected: str,
) -> None:
    auth = {"type": "static", "token": "t+k/n", "query_param": "access_token"}
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, auth=auth)}})
    url = URL(f"{proxy.url}/api/x" + (f"?{query}" if query else ""), encoded=True)
    async with client.get(url) as response:
        assert response.status == 200
    assert upstream.last["query"] == expected
    assert upstream.header_values("Authorization") == []


async def test_pass_through_adds_nothing_and_still_drops_client_credentials(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        {"connectors": {"api": connector(upstream.url, auth={"type": "none"})}}
    )
    headers = {"Authorization": "Bearer from-client", "X-Other": "kept"}
    async with client.get(f"{proxy.url}/api/x", headers=headers) as response:
        assert response.status == 200
    assert upstream.header_values("Authorization") == []
    assert upstream.header_values("X-Other") == ["kept"]
