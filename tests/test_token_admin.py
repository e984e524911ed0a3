"""Operating token connectors: warm-up and /ready, status, forced refresh, `tokenproxy token`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import StartOAuth2, StartProxy, connector, eventually, oauth2_connector
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer

ADMIN = {"Authorization": "Bearer admin-secret"}


async def ready(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(f"{url}/_proxy/ready") as response:
        return response.status, await response.json()


async def test_ready_waits_for_warmup_connectors(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    idp.delay = 0.3
    warm = {**oauth2_connector(upstream.url, idp.url), "warmup": True}
    lazy = {**oauth2_connector(upstream.url, idp.url), "route": "/lazy"}
    proxy = await start_proxy({"connectors": {"api": warm, "lazy": lazy}})
    status, body = await ready(client, proxy.url)
    assert (status, body["status"], body["waiting_for"]) == (503, "not_ready", ["api"])

    async def is_ready() -> bool:
        return (await ready(client, proxy.url))[0] == 200

    await eventually(is_ready)
    status, body = await ready(client, proxy.url)
    assert body == {
        "status": "ready",
        "connectors": {"api": "valid", "lazy": "none"},
        "store": {"backend": "memory", "health": "ok"},
    }
    assert len(idp.calls) == 1  # the lazy connector fetches on first use only


async def test_warmup_failure_keeps_the_proxy_unready_but_serving(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(401, {"error": "invalid_client"}))
    warm = {**oauth2_connector(upstream.url, idp.url), "warmup": True}
    other = connector(upstream.url, route="/other")
    proxy = await start_proxy({"connectors": {"api": warm, "other": other}})

    async def warm_up_failed() -> bool:
        return (await ready(client, proxy.url))[1]["connectors"]["api"] == "failing"

    await eventually(warm_up_failed)
    status, _ = await ready(client, proxy.url)
    assert status == 503 and len(idp.calls) == 1
    async with client.get(f"{proxy.url}/other/x") as response:
        assert response.status == 200


async def test_status_shows_counts_and_expiry_never_the_token(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_oauth2(refresh_margin=120)  # renewable from 180 s of 300
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 200
    clock.advance(200)
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        text = await response.text()
        (described,) = (await response.json())["connectors"]
    assert {
        k: described[k] for k in ("state", "expires_in", "last_error", "fetches", "failures")
    } == {
        "state": "expiring",
        "expires_in": 100,
        "last_error": None,
        "fetches": 1,
        "failures": 0,
    }
    assert described["auth"] == {"type": "oauth2", "header": "Authorization"}
    assert not any(token in text for token in idp.issued)
    assert "demo-secret" not in text


async def test_admin_refresh_fetches_a_new_token(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy(
        {
            "admin": {"token": "admin-secret"},
            "connectors": {
                "api": oauth2_connector(upstream.url, idp.url),
                "static": connector(upstream.url, route="/s"),
            },
        },
        FakeClock(),
    )
    refresh = f"{proxy.url}/_proxy/connectors/api/refresh"
    async with client.post(refresh) as response:
        assert response.status == 401
    for expected_fetches in (1, 2):
        async with client.post(refresh, headers=ADMIN) as response:
            assert response.status == 200
            body = await response.json()
        assert (body["state"], body["fetches"]) == ("valid", expected_fetches)
    assert len(idp.calls) == 2
    async with client.post(
        f"{proxy.url}/_proxy/connectors/nope/refresh", headers=ADMIN
    ) as response:
        assert response.status == 404
    async with client.post(
        f"{proxy.url}/_proxy/connectors/static/refresh", headers=ADMIN
    ) as response:
        assert (response.status, (await response.json())["state"]) == (200, "static")
    idp.script.append(answer(400, {"error": "invalid_scope"}))
    async with client.post(refresh, headers=ADMIN) as response:
        assert response.status == 502
        assert await response.json() == {
            "error": "token_endpoint_error",
            "message": "the token endpoint refused the request (400 invalid_scope)",
            "connector": "api",
        }


def tokenproxy_token(path: Path, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "token", name, "-c", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=30,
        env=os.environ,
    )


async def test_token_command(
    write_config: Callable[[dict[str, Any]], Path], upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    idp.overrides["access_token"] = "eyJhbGciOiJub25lIn0." + "x" * 40 + ".sig"
    path = write_config(
        {
            "connectors": {
                "api": oauth2_connector(upstream.url, idp.url),
                "static": connector(upstream.url, route="/s"),
            }
        }
    )
    result = await asyncio.to_thread(tokenproxy_token, path, "api")
    assert result.returncode == 0, result.stderr
    shown, expires, source = result.stdout.splitlines()
    assert shown == "api: Authorization: Bearer eyJh…(64 chars)"
    assert expires in ("  expires in: 299s", "  expires in: 298s")  # a second may have gone
    assert source == f"  source: oauth2 from {idp.url}/token"
    # A second run finds the token in the store: no token request.
    result = await asyncio.to_thread(tokenproxy_token, path, "api")
    assert result.stdout.splitlines()[2] == (
        f"  source: oauth2 from {idp.url}/token, read from the token store"
    )
    assert len(idp.calls) == 1
    result = await asyncio.to_thread(tokenproxy_token, path, "static")
    assert result.stdout.splitlines()[0] == "static: Authorization: Bearer …(21 chars)"
    idp.script.append(answer(401, {"error": "invalid_client"}))
    result = await asyncio.to_thread(tokenproxy_token, path, "api", "--fresh")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "api: token_endpoint_error: the token endpoint refused the request (401 invalid_client)"
    )
    result = await asyncio.to_thread(tokenproxy_token, path, "nope")
    assert result.returncode == 1
    assert "no connector 'nope' (connectors: api, static)" in result.stderr


async def test_token_says_what_it_waits_for_while_the_provider_is_slow(
    write_config: Callable[[dict[str, Any]], Path], upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    idp.delay = 1.5
    path = write_config({"connectors": {"api": oauth2_connector(upstream.url, idp.url)}})
    result = await asyncio.to_thread(tokenproxy_token, path, "api")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"api: waiting for oauth2 client_credentials from {idp.url}/token -> {upstream.url}..."
    )
