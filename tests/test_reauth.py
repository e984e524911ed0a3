"""Upstream rejections: compare-and-invalidate, one forced refresh, one replay."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.demo.echo import echo
from tests.conftest import RunningProxy, StartOAuth2, oauth2_connector, warm
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream


class RejectingUpstream:
    """Rejects every request carrying a token in ``rejected`` (or all, with ``always``)."""

    def __init__(self, status: int = 401, always: bool = False) -> None:
        self.status = status
        self.always = always
        self.rejected: set[str] = set()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        token = request.headers.get("Authorization", "")
        if self.always or token in self.rejected:
            return web.Response(
                status=self.status,
                text="token rejected",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return await echo(request)


async def with_revoked_token(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    **auth: Any,
) -> tuple[RunningProxy, str]:
    """A proxy whose first token worked once and is now rejected by the upstream."""
    proxy = await start_oauth2(**auth)
    rejecting = RejectingUpstream()
    upstream.respond = rejecting
    first = await warm(client, proxy, upstream)
    rejecting.rejected.add(first)
    return proxy, first


async def test_one_401_means_one_refresh_and_a_byte_exact_replay(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    proxy, first = await with_revoked_token(start_oauth2, upstream, client)
    body = os.urandom(50_000)
    async with client.post(f"{proxy.url}/api/orders", data=body) as response:
        assert response.status == 200
    assert len(idp.calls) == 2
    rejected_try, replay = upstream.requests[-2:]
    assert dict(rejected_try["headers"])["Authorization"] == first
    assert dict(replay["headers"])["Authorization"] != first
    digest = hashlib.sha256(body).hexdigest()
    assert rejected_try["body_sha256"] == replay["body_sha256"] == digest


async def test_a_401_that_persists_is_passed_through_after_one_retry(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_oauth2()
    upstream.respond = RejectingUpstream(always=True)
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert await response.text() == "token rejected"
    assert (len(idp.calls), len(upstream.requests)) == (2, 2)
    # Within reauth_interval no further forced refresh: the 401 passes straight through.
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 401
    assert (len(idp.calls), len(upstream.requests)) == (2, 3)
    clock.advance(31)
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 401
    assert (len(idp.calls), len(upstream.requests)) == (3, 5)


@pytest.mark.parametrize("chunked", [False, True])
async def test_bodies_too_large_to_buffer_are_not_replayed_but_the_token_is_renewed(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    chunked: bool,
) -> None:
    proxy, first = await with_revoked_token(start_oauth2, upstream, client, reauth_max_body=1000)

    async def stream() -> Any:
        yield b"x" * 100

    data = stream() if chunked else b"x" * 5000
    async with client.post(f"{proxy.url}/api/upload", data=data) as response:
        assert response.status == 401
    assert len(upstream.requests) == 2  # warm-up, and the one rejected try
    assert len(idp.calls) == 2  # ...but the rejected token was replaced for what follows
    async with client.get(f"{proxy.url}/api/next") as response:
        assert response.status == 200
    assert upstream.header_values("Authorization") != [first]


async def test_a_burst_of_401s_causes_one_refresh(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    proxy, first = await with_revoked_token(start_oauth2, upstream, client)
    idp.delay = 0.1

    async def one() -> int:
        async with client.get(f"{proxy.url}/api/x") as response:
            return response.status

    assert await asyncio.gather(*(one() for _ in range(100))) == [200] * 100
    assert len(idp.calls) == 2
    tokens = [dict(r["headers"])["Authorization"] for r in upstream.requests[1:]]
    assert tokens.count(first) == 100 and len(set(tokens)) == 2


@pytest.mark.parametrize(
    ("status", "reauth_on", "refreshes"),
    [
        (403, [401], 0),
        (403, [401, 403], 1),
        (407, [401], 0),
        (500, [401], 0),
        (502, [401], 0),
        (503, [401], 0),
    ],
)
async def test_only_configured_statuses_trigger_a_refresh(
    start_oauth2: StartOAuth2,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    status: int,
    reauth_on: list[int],
    refreshes: int,
) -> None:
    """Anything else (403 insufficient_scope, 407, 5xx) passes through as it came: no
    refresh, no retry (a POST is not idempotent)."""
    proxy = await start_oauth2(reauth_on=reauth_on)
    upstream.respond = RejectingUpstream(status=status, always=True)
    async with client.post(f"{proxy.url}/api/x", data=b"payload") as response:
        assert response.status == status
    assert len(idp.calls) == 1 + refreshes
    assert len(upstream.requests) == 1 + refreshes


async def test_clients_leaving_during_a_renewal_release_their_upstream_connections(
    start_proxy: Any,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    """100 clients get a slowly sent 401 and give up while the (slow) renewal runs: each
    half-read 401 must go back to the pool at once, or a healthy request finds none left."""

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/slow-401":
            return await echo(request)
        response = web.StreamResponse(status=401, headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(10)  # the rest never comes while the test runs
        return response

    upstream.respond = respond
    api = {**oauth2_connector(upstream.url, idp.url), "timeouts": {"connect": 1, "read": 30}}
    proxy = await start_proxy({"connectors": {"api": api}})
    await warm(client, proxy, upstream)
    idp.delay = 1.0

    async def give_up() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3), client.get(f"{proxy.url}/api/slow-401"):
                pass

    await asyncio.gather(*(give_up() for _ in range(100)))
    async with client.get(
        f"{proxy.url}/api/healthy", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        assert response.status == 200
