"""Token endpoints that misbehave at the transport: drips, resets, bombs, floods of nesting,
unresolvable names, persistent errors (hardening matrix group B)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartOAuth2, StartProxy, oauth2_connector
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer
from tests.test_token_cache import call


class ResettingTokenEndpoint:
    """Drops the first ``resets`` connections, before reading or after the whole request;
    then answers a client-credentials token. Counts connections."""

    def __init__(self, resets: int, *, after_request: bool) -> None:
        self.resets = resets
        self.after_request = after_request
        self.connections = 0
        self.url = ""

    async def start(self) -> ResettingTokenEndpoint:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > self.resets or self.after_request:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = next(
                    (
                        int(line[15:])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
            if self.connections > self.resets:
                body = b'{"access_token": "t-after-reset", "expires_in": 300}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
            else:
                writer.transport.abort()  # a reset, not a clean close
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize("after_request", [False, True], ids=["before-reading", "after-request"])
async def test_a_reset_is_retried_for_a_grant_that_is_safe_to_repeat(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    after_request: bool,
) -> None:
    endpoint = await ResettingTokenEndpoint(2, after_request=after_request).start()
    try:
        connector = oauth2_connector(upstream.url, endpoint.url)
        proxy = await start_proxy({"connectors": {"api": connector}}, clock)
        status, _ = await call(client, proxy)
        assert status == 200
        assert endpoint.connections == 3  # two resets, each retried, then the token
        assert upstream.header_values("Authorization") == ["Bearer t-after-reset"]
    finally:
        await endpoint.close()


async def test_a_renewal_cut_off_after_sending_is_never_replayed(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The provider may have rotated the refresh token before the connection broke: sending
    the old one again could trip its reuse detection and revoke the whole family."""
    endpoint = await ResettingTokenEndpoint(1, after_request=True).start()
    try:
        connector = oauth2_connector(
            upstream.url, endpoint.url, grant="refresh_token", refresh_token="rt-seed-1"
        )
        proxy = await start_proxy({"connectors": {"api": connector}}, clock)
        status, answer_ = await call(client, proxy)
        assert status == 502
        assert (
            answer_["json"]["message"]
            == "the token endpoint closed the connection without answering"
        )
        assert endpoint.connections == 1
        assert "rt-seed-1" not in caplog.text
    finally:
        await endpoint.close()


async def test_an_unresolvable_token_endpoint_is_a_dns_error(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolution fails as the system resolver reports it, without asking any DNS server."""
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo
    asked: list[str] = []

    async def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".invalid"):
            asked.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await resolve(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    connector = oauth2_connector(upstream.url, "https://idp.invalid")
    proxy = await start_proxy({"connectors": {"api": connector}}, clock)
    status, answer_ = await call(client, proxy)
    assert (status, answer_["json"]["message"]) == (502, "cannot connect to the token endpoint")
    assert (
        answer_["headers"]["Proxy-Status"]
        == 'tokenproxy; error=dns_error; details="token endpoint"'
    )
    assert len(asked) == 3  # nothing was sent: tried again, up to the attempts allowed


async def test_a_provider_failing_every_try_gets_three_tries_then_502(
    start_oauth2: StartOAuth2, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    proxy = await start_oauth2()
    idp.script.extend([answer(500, "oops")] * 3)
    status, answer_ = await call(client, proxy)
    assert (status, answer_["json"]["message"]) == (502, "the token endpoint answered 500")
    assert len(idp.calls) == 3


@pytest.mark.parametrize(
    "code",
    [
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
    ],
)
async def test_a_refusal_is_never_retried_and_logged_once_without_the_description(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    code: str,
) -> None:
    proxy = await start_oauth2()
    description = "client sec_CANARY_description is disabled"
    idp.script.append(answer(400, {"error": code, "error_description": description}))
    status, answer_ = await call(client, proxy)
    message = f"the token endpoint refused the request (400 {code})"
    assert (status, answer_["json"]["message"]) == (502, message)
    assert len(idp.calls) == 1
    alerts = [
        r for r in caplog.records if r.levelno >= logging.WARNING and message in r.getMessage()
    ]
    assert len(alerts) == 1
    assert "CANARY" not in caplog.text and "CANARY" not in str(answer_["json"])


async def dripping(request: web.BaseRequest) -> web.StreamResponse:
    """A token answer whose body comes a byte every 50 ms: it would take a minute."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 1200
    await response.prepare(request)
    for _ in range(1200):
        await response.write(b" ")
        await asyncio.sleep(0.05)
    return response


async def endless(request: web.BaseRequest) -> web.StreamResponse:
    """A token answer that never ends, as fast as the proxy reads."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"access_token": "t", "padding": "')
    for _ in range(10_000):  # bounded: 640 MB if nobody stops reading
        await response.write(b"x" * 65536)
    return response


async def gzip_bomb(request: web.BaseRequest) -> web.StreamResponse:
    """About 100 KB on the wire that inflates to 100 MB."""
    body = gzip.compress(b'{"access_token": "t", "padding": "' + b"x" * 100_000_000 + b'"}')
    return web.Response(
        body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (endless, "the token endpoint's answer is larger than 1 MiB"),
        (gzip_bomb, "the token endpoint's answer is larger than 1 MiB"),
        (
            answer(200, b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}),
            "the token endpoint's answer is not JSON (Content-Type: application/json)",
        ),
        (
            answer(200, b'{"access_token": "t", "a":' + b"[" * 1100 + b"]" * 1100 + b"}"),
            "the token endpoint's answer is not JSON (Content-Type: application/octet-stream)",
        ),
    ],
    ids=["never-ending", "gzip-bomb", "nested-100k", "nested-1100"],
)
async def test_hostile_answers_are_cut_off_at_the_cap(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    respond: Any,
    message: str,
) -> None:
    proxy = await start_oauth2()
    idp.script.append(respond)
    async with asyncio.timeout(5):
        status, answer_ = await call(client, proxy)
    assert (status, answer_["json"]["message"]) == (502, message)


async def test_a_dripped_answer_is_cut_off_at_one_deadline(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    api = oauth2_connector(upstream.url, idp.url)
    api["timeouts"] = {"connect": 0.2, "read": 0.4}
    proxy = await start_proxy({"connectors": {"api": api}})  # the real clock: real drips
    idp.script.extend([dripping] * 3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, answer_ = await call(client, proxy)
    assert (status, answer_["json"]["error"]) == (504, "token_endpoint_timeout")
    assert loop.time() - started < 1.0  # connect + read, not three tries of a minute
