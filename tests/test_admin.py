"""Admin endpoints: health, readiness, connector status, and the admin token."""

from __future__ import annotations

import os

import aiohttp
import pytest

from tests.conftest import RunningProxy, StartProxy, connector
from tests.fakes import RecordingUpstream

ADMIN_TOKEN = "adm_CANARY_1234"
NO_TLS = {"custom_ca": False, "client_certificate": False, "insecure_skip_verify": False}


async def test_health(api_proxy: RunningProxy, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{api_proxy.url}/_proxy/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok", "worker": os.getpid()}


async def test_ready_lists_every_connector(
    api_proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{api_proxy.url}/_proxy/ready") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ready", "connectors": {"api": "static"}}


async def test_connectors_describe_routing_but_never_credentials(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        {
            "admin": {"prefix": "/admin"},
            "connectors": {
                "api": connector(upstream.url + "/v2", hosts=["api.example.com"]),
                "q": connector(
                    upstream.url,
                    route="/q",
                    auth={"type": "static", "token": "sek", "query_param": "key"},
                    timeouts={"connect": 2, "read": 3},
                ),
            },
        }
    )
    async with client.get(f"{proxy.url}/admin/connectors") as response:
        assert response.status == 200
        body = await response.json()
    assert body == {
        "connectors": [
            {
                "name": "api",
                "route": "/api",
                "hosts": ["api.example.com"],
                "upstream": upstream.url + "/v2",
                "auth": {"type": "static", "header": "Authorization"},
                "timeouts": {"connect": 10, "read": 60},
                "tls": NO_TLS,
                "http_proxy": None,
                "warmup": False,
                "state": "static",
            },
            {
                "name": "q",
                "route": "/q",
                "hosts": [],
                "upstream": upstream.url,
                "auth": {"type": "static", "query_param": "key"},
                "timeouts": {"connect": 2, "read": 3},
                "tls": NO_TLS,
                "http_proxy": None,
                "warmup": False,
                "state": "static",
            },
        ]
    }


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        (f"Basic {ADMIN_TOKEN}", 401),
        (f"bearer {ADMIN_TOKEN}", 405),  # RFC 9110 §11.1: the scheme is case-insensitive
        (f"Bearer {ADMIN_TOKEN}", 405),
    ],
)
async def test_admin_posts_need_the_admin_token(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    authorization: str | None,
    status: int,
) -> None:
    proxy = await start_proxy(
        {"admin": {"token": ADMIN_TOKEN}, "connectors": {"api": connector(upstream.url)}}
    )
    headers = {"Authorization": authorization} if authorization else {}
    async with client.post(f"{proxy.url}/_proxy/connectors", headers=headers) as response:
        assert response.status == status
        body = await response.json()
    assert ADMIN_TOKEN not in str(body)
    assert body["error"] == ("unauthorized" if status == 401 else "method_not_allowed")


async def test_unknown_admin_path_is_404_and_never_forwarded(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{api_proxy.url}/_proxy/nothing") as response:
        assert response.status == 404
    assert upstream.requests == []


async def test_absolute_form_requests_never_reach_admin(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        {"connectors": {"api": connector(upstream.url, hosts=["api.example.com"])}}
    )
    async with client.get("http://api.example.com/_proxy/health", proxy=proxy.url) as response:
        assert response.status == 200
        assert (await response.json())["path"] == "/_proxy/health"  # the upstream's echo
    assert len(upstream.requests) == 1
