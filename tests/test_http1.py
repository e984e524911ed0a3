"""The lean upstream client (proxy.egress.http1): what it writes on the wire, when it uses a
connection again and when never, its pool's limit and keep-alive, and which connectors get
it. Framing abuse and failures are tested through the proxy in test_forwarding.py, which
the pure-Python parser runs too (Makefile)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy.egress.http1.client import Http1Client
from proxy.egress.http1.connection import UpstreamConnection
from proxy.egress.http1.pool import KEEPALIVE, UpstreamPool
from tests.conftest import STATIC_TOKEN, RunningProxy, StartProxy, connector, eventually
from tests.fakes import KeepAliveUpstream, RecordingUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def proxy_to(start_proxy: StartProxy, upstream: KeepAliveUpstream) -> RunningProxy:
    return await start_proxy(
        {"connectors": {"api": connector(f"http://127.0.0.1:{upstream.port}")}}
    )


def lean_client(
    port: int, connect: float = 5, limit: int = 100, keepalive: float = KEEPALIVE
) -> Http1Client:
    """A lean client of a plain-http upstream on ``port`` (its pool: ``.pool``)."""
    pool = UpstreamPool("127.0.0.1", port, None, None, connect, limit, keepalive)
    return Http1Client(pool, f"127.0.0.1:{port}")


@pytest.fixture
async def keep_alive() -> KeepAliveUpstream:
    upstream = await KeepAliveUpstream(lambda _: OK).start()
    yield upstream
    await upstream.close()


async def test_requests_share_one_kept_alive_connection(
    start_proxy: StartProxy, client: aiohttp.ClientSession, keep_alive: KeepAliveUpstream
) -> None:
    proxy = await proxy_to(start_proxy, keep_alive)
    for _ in range(20):
        async with client.get(f"{proxy.url}/api/x") as response:
            assert (response.status, await response.read()) == (200, b"ok")
    assert (len(keep_alive.requests), keep_alive.connections) == (20, 1)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", id="close"
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", id="http-1.0"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\nok" + KeepAliveUpstream.CLOSE, id="until-close"),
        pytest.param(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra", id="bytes-beyond"),
        pytest.param(OK + KeepAliveUpstream.CLOSE, id="closed-unannounced"),
        pytest.param(OK + b"HTTP/1.1 200 OK\r\nX-A: b", id="partial-beyond"),
    ],
)
async def test_a_connection_is_used_again_only_after_a_clean_exchange(
    start_proxy: StartProxy, client: aiohttp.ClientSession, first: bytes
) -> None:
    upstream = await KeepAliveUpstream(lambda n: first if n == 0 else OK).start()
    try:
        proxy = await proxy_to(start_proxy, upstream)
        for _ in range(2):
            async with client.get(f"{proxy.url}/api/x") as response:
                assert (response.status, await response.read()) == (200, b"ok")
            await asyncio.sleep(0.05)  # the upstream's close, if any, reaches the pool
    finally:
        await upstream.close()
    assert (len(upstream.requests), upstream.connections) == (2, 2)


@pytest.mark.parametrize(
    ("method", "body", "framing"),
    [
        pytest.param("GET", None, b"", id="get"),
        pytest.param("DELETE", None, b"Content-Length: 0\r\n", id="delete-without-body"),
        pytest.param("POST", None, b"Content-Length: 0\r\n", id="post-without-body"),
        pytest.param("POST", b"hello", b"Content-Length: 5\r\n", id="held-body"),
        pytest.param("PUT", "stream", b"Transfer-Encoding: chunked\r\n", id="streamed-body"),
    ],
)
async def test_what_goes_on_the_wire(
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    keep_alive: KeepAliveUpstream,
    method: str,
    body: bytes | str | None,
    framing: bytes,
) -> None:
    proxy = await proxy_to(start_proxy, keep_alive)

    async def chunks():  # no length: the client sends it chunked, and so does the proxy
        for part in (b"a" * 10, b"b" * 70_000):
            yield part

    data = chunks() if body == "stream" else body
    headers = {"X-Custom": "kept", "Cookie": "c=1"}
    async with client.request(method, f"{proxy.url}/api/p?q=1", data=data, headers=headers) as r:
        assert r.status == 200
    request = keep_alive.requests[0]
    head, _, sent_body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == f"{method} /p?q=1 HTTP/1.1".encode()
    assert f"Host: 127.0.0.1:{keep_alive.port}".encode() in lines
    assert b"X-Custom: kept" in lines and b"Cookie: c=1" in lines
    assert b"Authorization: Bearer " + STATIC_TOKEN.encode() in lines
    framing_lines = [line for line in lines if line.split(b":")[0].lower() in _FRAMING]
    assert framing_lines == framing.split(b"\r\n")[:-1]
    if body == "stream":
        assert dechunked(sent_body) == b"a" * 10 + b"b" * 70_000
    else:
        assert sent_body == (body or b"")


_FRAMING = {b"content-length", b"transfer-encoding"}


def dechunked(body: bytes) -> bytes:
    """The data of a chunked body; fails unless it ends with the last chunk."""
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return data
        data, body = data + body[:size], body[size + 2 :]


async def test_interim_answers_are_skipped(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    upstream = await KeepAliveUpstream(lambda _: interim + OK).start()
    try:
        proxy = await proxy_to(start_proxy, upstream)
        async with client.get(f"{proxy.url}/api/x") as response:
            assert (response.status, await response.read()) == (200, b"ok")
            assert "Link" not in response.headers
    finally:
        await upstream.close()


async def test_an_early_answer_ends_the_upload_and_its_connection(
    start_proxy: StartProxy, client: aiohttp.ClientSession, upstream: RecordingUpstream
) -> None:
    """An upstream refusing a streamed upload before reading it: the client gets that
    answer, and the half-sent connection is never used again."""
    from aiohttp import web

    async def refuse(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=413, text="too big")

    upstream.respond = refuse
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})

    async def slow_body():
        yield b"x" * 1000
        await asyncio.sleep(0.3)
        yield b"y" * 1000

    async with client.put(f"{proxy.url}/api/upload", data=slow_body()) as response:
        assert (response.status, await response.text()) == (413, "too big")
    upstream.respond = None
    async with client.get(f"{proxy.url}/api/next") as response:
        assert response.status == 200
    egress = proxy.server.runtime.connectors["api"].upstream
    await eventually(lambda: _true(egress.in_use == 0))


async def _true(value: bool) -> bool:
    return value


async def test_the_pool_keeps_to_its_limit_and_lets_idle_connections_go(
    keep_alive: KeepAliveUpstream,
) -> None:
    http1 = lean_client(keep_alive.port, limit=2, keepalive=0.3)
    pool = http1.pool

    async def one() -> bytes:
        answer = await http1.request("GET", "/", CIMultiDict(), None)
        try:
            return await answer.content.read()
        finally:
            answer.close()

    try:
        assert await asyncio.gather(*(one() for _ in range(8))) == [b"ok"] * 8
        assert keep_alive.most_open <= 2 and keep_alive.connections == 2
        await eventually(lambda: _true(keep_alive.open == 0), within=3)  # idle 0.3 s: closed
        assert pool.in_use == 0
    finally:
        await http1.close()


async def test_a_connect_timeout_counts_the_wait_for_a_free_connection(
    keep_alive: KeepAliveUpstream,
) -> None:
    http1 = lean_client(keep_alive.port, connect=0.2, limit=1)
    held = await http1.request("GET", "/", CIMultiDict(), None)  # not closed: holds the one
    try:
        with pytest.raises(aiohttp.ConnectionTimeoutError):
            await http1.request("GET", "/", CIMultiDict(), None)
    finally:
        held.close()
        await http1.close()


@pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "http_proxy"])
async def test_the_lean_client_serves_every_connector_but_those_behind_an_egress_proxy(
    start_proxy: StartProxy, keep_alive: KeepAliveUpstream, via_proxy: bool
) -> None:
    extra = {"http_proxy": "http://127.0.0.1:9"} if via_proxy else {}
    proxy = await start_proxy(
        {"connectors": {"api": connector(f"http://127.0.0.1:{keep_alive.port}", **extra)}}
    )
    egress = proxy.server.runtime.connectors["api"].upstream
    assert (egress.http1 is None, egress.session is None) == (via_proxy, not via_proxy)


async def test_an_invalid_answer_is_502_and_logs_no_secret(
    start_proxy: StartProxy, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await KeepAliveUpstream(lambda _: b"HTTP/1.1 2OO OK\r\n\r\n").start()
    caplog.set_level(logging.DEBUG)
    try:
        proxy = await proxy_to(start_proxy, upstream)
        async with client.get(f"{proxy.url}/api/x?api_key=canary-q-7781") as response:
            body = await response.json()
    finally:
        await upstream.close()
    assert (response.status, body["error"]) == (502, "upstream_unreachable")
    assert body["message"] == "the upstream sent an invalid response"
    assert "canary-q-7781" not in caplog.text and STATIC_TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("listen", "upstream_host", "host_header"),
    [
        pytest.param("::1", "[::1]", "[::1]", id="ipv6-literal"),
        pytest.param("127.0.0.1", "localhost", "localhost", id="name-resolved"),
    ],
)
async def test_upstreams_by_ipv6_literal_or_by_name(
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    listen: str,
    upstream_host: str,
    host_header: str,
) -> None:
    """An IPv6 literal is connected to and named in ``Host`` in brackets; a name is
    resolved, and when ``localhost`` gives ::1 first while the upstream listens on
    127.0.0.1 only, the next address is tried (a blackholed address, where Happy Eyeballs'
    250 ms matter, cannot be made on loopback)."""
    upstream = await KeepAliveUpstream(lambda _: OK, host=listen).start()
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://{upstream_host}:{upstream.port}")}}
        )
        async with client.get(f"{proxy.url}/api/x") as response:
            assert (response.status, await response.read()) == (200, b"ok")
    finally:
        await upstream.close()
    assert f"Host: {host_header}:{upstream.port}".encode() in upstream.requests[0].split(b"\r\n")


async def test_an_unresolvable_upstream_is_a_dns_error(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector("http://upstream.invalid")}})
    async with client.get(f"{proxy.url}/api/x") as response:
        body = await response.json()
    assert (response.status, body["error"]) == (502, "upstream_unreachable")
    assert response.headers["Proxy-Status"] == "tokenproxy; error=dns_error"


async def test_a_connect_cancelled_after_the_connection_was_made_frees_its_slot_once(
    keep_alive: KeepAliveUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = lean_client(keep_alive.port, limit=1).pool
    acquiring = asyncio.get_running_loop().create_task(pool.acquire())
    made = UpstreamConnection.connection_made

    def made_then_cancelled(self: UpstreamConnection, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        acquiring.cancel()  # the connect timeout firing, or the client leaving, just now

    monkeypatch.setattr(UpstreamConnection, "connection_made", made_then_cancelled)
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    monkeypatch.undo()
    await eventually(lambda: _true(keep_alive.open == 0))
    assert pool.in_use == 0
    connection = await pool.acquire()  # the one slot is free
    pool.release(connection)
    await pool.close()


async def test_an_unfinished_exchange_frees_its_slot_at_once() -> None:
    """An upstream that never reads: the request given up on (a read timeout) must not
    hold its pool slot while its unsent body waits in the socket's buffer."""
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http1 = lean_client(port, connect=1, limit=1)
    pool = http1.pool
    try:
        for _ in range(3):  # each one needs the single slot
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await http1.request("POST", "/", CIMultiDict(), b"x" * 8_000_000)
            await eventually(lambda: _true(pool.in_use == 0), within=2)
    finally:
        await http1.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_an_idle_connection_already_closing_is_never_handed_out(
    keep_alive: KeepAliveUpstream,
) -> None:
    http1 = lean_client(keep_alive.port)
    pool = http1.pool
    try:
        answer = await http1.request("GET", "/", CIMultiDict(), None)
        await answer.content.read()
        answer.close()
        (idle,) = pool._idle
        assert idle.transport is not None
        idle.transport.close()  # as when the upstream's FIN arrives: closing, not yet lost
        assert await pool.acquire() is not idle
    finally:
        await http1.close()


async def test_a_waiter_woken_then_cancelled_passes_its_turn_on(
    keep_alive: KeepAliveUpstream,
) -> None:
    http1 = lean_client(keep_alive.port, limit=1)
    pool = http1.pool
    held = await http1.request("GET", "/", CIMultiDict(), None)
    await held.content.read()
    first = asyncio.get_running_loop().create_task(pool.acquire())
    second = asyncio.get_running_loop().create_task(pool.acquire())
    await asyncio.sleep(0.05)  # both wait for the one slot
    held.close()  # back to the pool: the first in line is woken...
    first.cancel()  # ...and gone before it could take it
    async with asyncio.timeout(2):
        connection = await second
    pool.release(connection)
    assert first.cancelled()
    await http1.close()
