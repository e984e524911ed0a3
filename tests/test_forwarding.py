"""Forwarding end to end: client -> proxy -> fake upstream, all on real loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    STATIC_TOKEN,
    RunningProxy,
    StartProxy,
    connector,
    oauth2_connector,
    raw_request,
    status_of,
)
from tests.fakes import FakeIdP, RawUpstream, RecordingUpstream


async def test_request_reaches_upstream_under_base_path_with_token(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{api_proxy.url}/api/items/7?expand=1") as response:
        assert response.status == 200
        echoed = await response.json()
    assert echoed["path"] == "/base/items/7"
    assert echoed["query"] == "expand=1"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]
    assert upstream.header_values("Host") == [upstream.url.removeprefix("http://")]


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("/base", "/api", "/base"),
        ("/base", "/api/", "/base/"),
        ("/base/", "/api/x/y", "/base/x/y"),
        ("", "/api", "/"),
        ("", "/api/x", "/x"),
    ],
)
async def test_path_mapping_onto_the_upstream_base(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    base: str,
    path: str,
    expected: str,
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url + base)}})
    async with client.get(proxy.url + path) as response:
        assert response.status == 200
    assert upstream.last["path"] == expected


async def test_query_string_and_path_reach_the_wire_byte_exact(start_proxy: StartProxy) -> None:
    raw = await RawUpstream(b"HTTP/1.1 204 No Content\r\n\r\n").start()
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://127.0.0.1:{raw.port}/b")}}
        )
        query = "a=%2F&b=+&c=%20&d=%zz&e=&f=%C3%A9&" + "x" * 7000
        answer = await raw_request(
            proxy.port,
            f"GET /api/p%20q/r?{query} HTTP/1.1\r\nHost: localhost\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert status_of(answer) == 204
        assert raw.received[0].startswith(f"GET /b/p%20q/r?{query} HTTP/1.1\r\n".encode())
    finally:
        await raw.close()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_methods_pass_through(
    api_proxy: RunningProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    method: str,
) -> None:
    async with client.request(method, f"{api_proxy.url}/api/x") as response:
        assert response.status == 200
    assert upstream.last["method"] == method


async def test_head_keeps_the_upstream_content_length(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    async def sized(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"x" * 1234)

    upstream.respond = sized
    async with client.head(f"{api_proxy.url}/api/x") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1234"
        assert await response.read() == b""


async def test_request_headers_are_filtered_before_the_credential_is_injected(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    request = (
        "GET /api/x HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Connection: keep-alive, X-Nominated, Authorization\r\n"
        "Connection: \r\n"
        "Connection: X-Second\r\n"
        "X-Nominated: drop-me\r\n"
        "X-Second: drop-me-too\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: trailers\r\n"
        "Trailer: X-T\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "Authorization: Bearer junk-from-client\r\n"
        "X-Forwarded-For: 10.0.0.1\r\n"
        "X-Forwarded-Host: evil.example\r\n"
        "X-Forwarded-Proto: https\r\n"
        "Forwarded: for=10.0.0.1\r\n"
        "X-Real-IP: 10.0.0.1\r\n"
        "X_Forwarded_For: 10.0.0.2\r\n"
        "X-Kept: one\r\n"
        "X-Kept: two\r\n"
        "Cookie: session=abc\r\n"
        "User-Agent: legacy/1.0\r\n"
        "\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(request.encode())
        await writer.drain()
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    names = [name.lower() for name, _ in upstream.last["headers"]]
    assert sorted(names) == [
        "authorization", "cookie", "host", "user-agent", "x-kept", "x-kept", "x-request-id"
    ]  # fmt: skip
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]
    assert upstream.header_values("X-Kept") == ["one", "two"]


async def test_response_hop_by_hop_headers_are_stripped(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    async def hop_headers(request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(text="ok")
        for name, value in [
            ("Connection", "X-Secret"),
            ("X-Secret", "internal"),
            ("Keep-Alive", "timeout=99"),
            ("Proxy-Authenticate", "Basic realm=x"),
            ("Upgrade", "h2c"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("X-Upstream", "kept"),
        ]:
            response.headers.add(name, value)
        return response

    upstream.respond = hop_headers
    async with client.get(f"{api_proxy.url}/api/x") as response:
        assert await response.text() == "ok"
        headers = response.headers
    for name in ("X-Secret", "Keep-Alive", "Proxy-Authenticate", "Upgrade"):
        assert name not in headers
    assert headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert headers["X-Upstream"] == "kept"


async def _chunks(total: int, size: int = 65536) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = os.urandom(min(size, total - sent))
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize("with_length", [True, False])
async def test_request_body_streams_with_the_clients_framing(
    start_proxy: StartProxy, with_length: bool
) -> None:
    raw = await RawUpstream(b"HTTP/1.1 204 No Content\r\n\r\n").start()
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://127.0.0.1:{raw.port}")}}
        )
        body = b"a" * 5000
        framing = f"Content-Length: {len(body)}" if with_length else "Transfer-Encoding: chunked"
        payload = body if with_length else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        request = (
            f"POST /api/up HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{framing}\r\n\r\n"
        )
        assert status_of(await raw_request(proxy.port, request.encode() + payload)) == 204
        head = raw.received[0].lower()
        if with_length:
            assert b"content-length: 5000\r\n" in head and b"transfer-encoding" not in head
        else:
            assert b"transfer-encoding: chunked\r\n" in head and b"content-length" not in head
    finally:
        await raw.close()


async def test_large_upload_streams_through_intact(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    digest = hashlib.sha256()
    total = 8 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        async for chunk in _chunks(total):
            digest.update(chunk)
            yield chunk

    async with client.post(f"{api_proxy.url}/api/upload", data=body()) as response:
        assert response.status == 200
    assert upstream.last["body_bytes"] == total
    assert upstream.last["body_sha256"] == digest.hexdigest()


@pytest.mark.parametrize("sized", [True, False])
async def test_large_download_streams_through_intact(
    api_proxy: RunningProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    sized: bool,
) -> None:
    total = 8 * 1024 * 1024
    digest = hashlib.sha256()

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        if sized:
            response.content_length = total
        await response.prepare(request)
        async for chunk in _chunks(total):
            digest.update(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response

    upstream.respond = stream
    received = hashlib.sha256()
    async with client.get(f"{api_proxy.url}/api/download") as response:
        assert response.status == 200
        assert response.headers.get("Content-Length") == (str(total) if sized else None)
        async for chunk in response.content.iter_any():
            received.update(chunk)
    assert received.hexdigest() == digest.hexdigest()


async def test_compressed_bodies_pass_byte_exact_both_ways(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    compressed = gzip.compress(b"0" * 100_000)

    async def gzipped(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    upstream.respond = gzipped
    async with client.post(
        f"{api_proxy.url}/api/z", data=compressed, headers={"Content-Encoding": "gzip"}
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Length"] == str(len(compressed))
        assert await response.read() == compressed
    assert upstream.last["body_bytes"] == len(compressed)
    assert upstream.last["body_sha256"] == hashlib.sha256(compressed).hexdigest()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_go_back_to_the_client_unfollowed(
    api_proxy: RunningProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    status: int,
) -> None:
    async def redirect(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": f"{upstream.url}/elsewhere"})

    upstream.respond = redirect
    async with client.get(f"{api_proxy.url}/api/x", allow_redirects=False) as response:
        assert response.status == status
        assert response.headers["Location"] == f"{upstream.url}/elsewhere"
    assert len(upstream.requests) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _error_of(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object], str]:
    async with client.get(url) as response:
        return response.status, await response.json(), response.headers["Proxy-Status"]


async def test_unreachable_upstream_is_502(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        {"connectors": {"api": connector(f"http://127.0.0.1:{_closed_port()}")}}
    )
    status, body, proxy_status = await _error_of(client, f"{proxy.url}/api/x")
    assert status == 502
    assert body == {
        "error": "upstream_unreachable",
        "message": "cannot connect to the upstream",
        "connector": "api",
    }
    assert proxy_status == "tokenproxy; error=connection_refused"  # RFC 9209's closest type


async def test_upstream_connect_timeout_is_504(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    # A listener whose accept queue is full: further SYNs are dropped and connect() hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        proxy = await start_proxy(
            {
                "connectors": {
                    "api": connector(f"http://127.0.0.1:{port}", timeouts={"connect": 0.3})
                }
            }
        )
        status, body, proxy_status = await _error_of(client, f"{proxy.url}/api/x")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert (status, body["error"], body["message"]) == (
        504,
        "upstream_timeout",
        "timed out connecting to the upstream",
    )
    assert proxy_status == "tokenproxy; error=connection_timeout"


async def assert_nothing_left_behind(proxy: RunningProxy) -> None:
    """After a failure, no upstream connection is still held and no client connection (nor
    its handler task) lingers."""
    egress = proxy.server.runtime.connectors["api"].upstream
    async with asyncio.timeout(2):
        while egress.in_use or proxy.server.client_connections:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_upstream_read_timeout_is_504(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    raw = await RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", delay=3).start()
    try:
        proxy = await start_proxy(
            {
                "connectors": {
                    "api": connector(f"http://127.0.0.1:{raw.port}", timeouts={"read": 0.3})
                }
            }
        )
        status, body, _ = await _error_of(client, f"{proxy.url}/api/x")
    finally:
        await raw.close()
    assert (status, body["error"]) == (504, "upstream_timeout")


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"only-ten!!"], id="short-body"
        ),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"zz\r\n"],
            id="bad-chunk",
        ),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"],
            id="no-last-chunk",
        ),
        pytest.param(  # ten bytes, then silence with the connection open: a stall
            [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"0123456789", b""],
            id="stall",
        ),
    ],
)
async def test_upstream_failing_mid_body_aborts_the_client_connection(
    start_proxy: StartProxy, response: list[bytes]
) -> None:
    raw = await RawUpstream(response, then_close=response[-1] != b"").start()
    # Only the stall waits for the read timeout: keep it short. (A bad chunk-size line ends
    # the relay at once: the lean client fails the body when the parser refuses its bytes.)
    timeouts = {"read": 1}
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://127.0.0.1:{raw.port}", timeouts=timeouts)}}
        )
        answer = await raw_request(
            proxy.port, b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n", until_close=True
        )
    finally:
        await raw.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await assert_nothing_left_behind(proxy)
    # The client must see a broken response: a declared length not met, or no last chunk.
    if b"Content-Length: 100" in head:
        assert len(body) < 100
    else:
        assert b"Transfer-Encoding: chunked" in head
        assert not body.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            id="two-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", id="nul-in-header"
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            id="101",
        ),
        pytest.param(b"", id="closed-without-answer"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
    ],
)
async def test_broken_upstream_responses_before_headers_are_502(
    start_proxy: StartProxy, client: aiohttp.ClientSession, response: bytes
) -> None:
    raw = await RawUpstream(response).start()
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://127.0.0.1:{raw.port}")}}
        )
        status, body, _ = await _error_of(client, f"{proxy.url}/api/x")
    finally:
        await raw.close()
    assert (status, body["error"], body["connector"]) == (502, "upstream_unreachable", "api")


async def test_client_going_away_cancels_the_upstream_request(start_proxy: StartProxy) -> None:
    upstream_closed = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # returns when the proxy closes its side
        upstream_closed.set()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy({"connectors": {"api": connector(f"http://127.0.0.1:{port}")}})
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /api/slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        async with asyncio.timeout(5):
            await upstream_closed.wait()
    finally:
        server.close()
        await server.wait_closed()


async def test_http10_client_is_served(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    answer = await raw_request(api_proxy.port, b"GET /api/x HTTP/1.0\r\nHost: localhost\r\n\r\n")
    assert status_of(answer) == 200
    assert upstream.last["path"] == "/base/x"


async def test_a_pooled_connection_never_carries_a_stale_read_timer(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    """A large answer streamed to a slow reader, then a pause longer than timeouts.read: the
    next request on that pooled connection once failed at once with a 504, although the
    upstream got it (aiohttp re-armed its sock_read timer on the idle connection)."""
    big = b"x" * (8 * 1024 * 1024)

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=big if request.path == "/big" else b"ok")

    upstream.respond = respond
    api = connector(upstream.url, timeouts={"connect": 1, "read": 0.5})
    proxy = await start_proxy({"connectors": {"api": api}})
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /api/big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(20):
            while await reader.read(16384):  # noqa: ASYNC110 - pacing a slow reader
                await asyncio.sleep(0.0005)  # a slow reader: the proxy pauses reading upstream
        writer.close()
        await asyncio.sleep(0.7)  # longer than timeouts.read: a stale timer would have fired
        async with client.get(f"{proxy.url}/api/small") as response:
            assert response.status == 200


async def test_time_spent_writing_to_a_paused_client_never_counts_as_an_upstream_stall(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    """The body's idle timeout is armed only while the relay waits for the upstream: a
    client that reads nothing for longer than timeouts.read still gets the whole answer."""
    big = b"y" * (32 * 1024 * 1024)  # more than the socket buffers on both sides hold

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=big)

    upstream.respond = respond
    api = connector(upstream.url, timeouts={"connect": 1, "read": 0.3})
    proxy = await start_proxy({"connectors": {"api": api}})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=2**16)
    try:
        writer.write(b"GET /api/big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1)  # reading nothing: the proxy's writes to us wait meanwhile
        received = 0
        async with asyncio.timeout(20):
            while chunk := await reader.read(2**16):
                received += len(chunk)
    finally:
        writer.close()
    assert received == len(big)


async def test_an_upstream_bare_lf_ends_a_header_line_and_goes_out_as_crlf(
    start_proxy: StartProxy,
) -> None:
    """RFC 9112 §2.2 lets a recipient take a lone LF as a line end, and nginx does: the
    upstream frames its own headers (it could send CRLF just as well), so tokenproxy does
    too, and what it sends on is always CRLF-framed, never a bare LF."""
    raw = await RawUpstream(
        b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 0\r\n\r\n"
    ).start()
    try:
        api = connector(f"http://127.0.0.1:{raw.port}")
        proxy = await start_proxy({"connectors": {"api": api}})
        answer = await raw_request(
            proxy.port, b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
    finally:
        await raw.close()
    head = answer.split(b"\r\n\r\n")[0]
    assert b"\r\nX-A: a\r\n" in head and b"\r\nX-B: b\r\n" in head
    assert b"\n" not in head.replace(b"\r\n", b"")


async def test_a_client_sending_two_authorization_headers_never_gets_either_forwarded(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    answer = await raw_request(
        api_proxy.port,
        b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer mine-1\r\n"
        b"Authorization: Basic bWluZTI=\r\nConnection: close\r\n\r\n",
    )
    assert status_of(answer) == 200
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]


async def test_a_slow_reader_holds_the_upstream_back_instead_of_filling_memory(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    """Row C10: while the client reads nothing, the upstream gets to write only what socket
    and stream buffers hold (a few MiB), not the 64 MiB answer: memory stays bounded by
    back-pressure. Then the whole answer arrives intact."""
    total, written = 64 * 1024 * 1024, [0]

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = total
        await response.prepare(request)
        async for chunk in _chunks(total):
            await response.write(chunk)
            written[0] += len(chunk)
        return response

    upstream.respond = stream
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(b"GET /api/big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.5)  # a reader that has stopped reading
        assert written[0] < 16 * 1024 * 1024
        received = 0
        async with asyncio.timeout(30):
            while chunk := await reader.read(1024 * 1024):
                received += len(chunk)
    finally:
        writer.close()
    assert received == total


async def test_early_hints_are_dropped_and_the_final_answer_relayed(
    start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    raw = await RawUpstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ).start()
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://127.0.0.1:{raw.port}")}}
        )
        answer = await raw_request(
            proxy.port, b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
    finally:
        await raw.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
    assert b"Early Hints" not in answer and b"Link:" not in answer  # (ids may hold "103")


async def test_a_full_upstream_pool_is_a_bounded_wait_and_never_starves_the_token_endpoint(
    start_proxy: StartProxy, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    """Row C15: with all 100 pooled upstream connections busy, one more request waits the
    connect timeout for a free one and gets 504; the token endpoint has its own pool."""
    raw = await RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", delay=4).start()
    api = oauth2_connector(f"http://127.0.0.1:{raw.port}", idp.url)
    api["timeouts"] = {"connect": 0.3, "read": 10}
    proxy = await start_proxy({"connectors": {"api": api}})
    busy = [asyncio.create_task(client.get(f"{proxy.url}/api/{i}")) for i in range(100)]
    try:
        async with asyncio.timeout(5):
            while len(raw.received) < 100:  # noqa: ASYNC110 - the raw server has no event
                await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with aiohttp.ClientSession() as other:  # the test client's own pool is full too
            status, body, proxy_status = await _error_of(other, f"{proxy.url}/api/one-more")
            async with other.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
                assert response.status == 200  # a token request, while the upstream pool is full
        assert (status, body["error"], proxy_status) == (
            504,
            "upstream_timeout",
            "tokenproxy; error=connection_timeout",
        )
        assert loop.time() - started < 2
        assert len(idp.calls) == 2
    finally:
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        await raw.close()
