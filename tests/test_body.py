"""The request body under the server's limits: idle timeout, size caps, header total,
``Expect: 100-continue``; over raw sockets, as hostile clients send them."""

from __future__ import annotations

import asyncio
import gzip
import hashlib

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpRawServer

from tests.conftest import StartProxy, connector, status_of
from tests.fakes import RecordingUpstream

HEAD = b"POST /api/x HTTP/1.1\r\nHost: localhost\r\n"


@pytest.fixture
async def port(start_proxy: StartProxy, upstream: RecordingUpstream) -> int:
    proxy = await start_proxy(
        {
            "server": {"body_timeout": 0.5, "max_body": "1KiB", "max_header_bytes": "4KiB"},
            "connectors": {
                "api": connector(upstream.url),
                "big": connector(upstream.url, route="/big", max_body="1MiB"),
            },
        }
    )
    return proxy.port


async def exchange(
    port: int, data: bytes, *, then: bytes = b"", pause: float = 0, within: float = 5
) -> bytes:
    """Send ``data``, wait ``pause``, send ``then``; read until the proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
        if then:
            writer.write(then)
            await writer.drain()
        async with asyncio.timeout(within):
            return await reader.read(-1)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "data",
    [
        HEAD + b"Content-Length: 100\r\n\r\nabc",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        HEAD + b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        b"POST /big/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\nabc",
    ],
    ids=["content-length", "chunked", "expect-withheld", "streamed"],
)
async def test_a_client_that_stops_sending_its_body_gets_408_and_is_closed(
    port: int, upstream: RecordingUpstream, data: bytes
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await exchange(port, data)
    assert 0.4 < loop.time() - started < 3
    final = answer.split(b"HTTP/1.1 100 Continue\r\n\r\n")[-1]
    assert status_of(final) == 408
    assert b'"error":"request_timeout"' in final
    # A streamed body was on its way upstream: that request was abandoned, never completed.
    assert all(r["body_bytes"] < 5000 for r in upstream.requests)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (HEAD + b"Content-Length: 1025\r\n\r\n" + b"x" * 1025, 413),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n", 413),
        (HEAD + b"Content-Length: 1024\r\n\r\n" + b"x" * 1024, 200),
        (
            b"POST /big/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n"
            + b"x" * 5000,
            200,
        ),
        (HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(7)) + b"\r\n", 200),
        (HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(9)) + b"\r\n", 431),
    ],
    ids=[
        "declared-too-large",
        "chunked-too-large",
        "at-the-cap",
        "connector-cap",
        "headers-ok",
        "headers-over",
    ],
)
async def test_size_limits(
    port: int, upstream: RecordingUpstream, data: bytes, status: int
) -> None:
    if b"Transfer-Encoding: chunked" in data:
        data += b"1\r\nx\r\n0\r\n\r\n"  # one byte more: over the cap
    elif b"Content-Length" not in data:
        data = data.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")
    answer = await exchange(
        port, data.replace(b"Host: localhost\r\n", b"Host: localhost\r\nConnection: close\r\n")
    )
    assert status_of(answer) == status
    code = {413: b"body_too_large", 431: b"headers_too_large"}.get(status)
    if code is not None:
        assert b'"error":"' + code + b'"' in answer


async def test_a_declared_body_over_the_cap_never_reaches_the_upstream(
    port: int, upstream: RecordingUpstream
) -> None:
    answer = await exchange(port, HEAD + b"Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n")
    assert b"100 Continue" not in answer  # refused before the client sends it
    assert status_of(answer) == 413
    assert upstream.requests == []


async def test_expect_100_continue_is_answered_then_the_body_is_forwarded(
    port: int, upstream: RecordingUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            HEAD + b"Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(2):  # curl waits 1 s, others longer: answer at once
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        await writer.drain()
        async with asyncio.timeout(5):
            final = await reader.read(-1)
    finally:
        writer.close()
    assert status_of(final) == 200
    assert upstream.last["body_bytes"] == 5
    assert not any(name.lower() == "expect" for name, _ in upstream.last["headers"])


CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
BIG_CHUNKED = CHUNKED.replace(b"/api/x", b"/big/x")


@pytest.mark.parametrize(
    ("data", "body"),
    [
        (CHUNKED + b"3;name=value;x\r\nabc\r\n0\r\n\r\n", b"abc"),
        (CHUNKED + b"3\r\nabc\r\n0\r\nX-Trailer: v\r\n\r\n", b"abc"),
        (BIG_CHUNKED + b"1\r\nx\r\n" * 100_000 + b"0\r\n\r\n", b"x" * 100_000),
    ],
    ids=["extensions", "trailers", "100k-tiny-chunks"],
)
async def test_chunked_framing_is_read_and_never_relayed(
    port: int, upstream: RecordingUpstream, data: bytes, body: bytes
) -> None:
    answer = await exchange(port, data)
    assert status_of(answer) == 200
    received = upstream.last
    assert (received["body_bytes"], received["body_sha256"]) == (len(body), sha256(body))
    names = {name.lower() for name, _ in received["headers"]}
    assert "x-trailer" not in names  # trailers are never forwarded
    assert b"name=value" not in answer


async def test_framing_headers_in_trailers_are_refused_or_dropped(
    port: int, upstream: RecordingUpstream
) -> None:
    trailers = b"0\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
    answer = await exchange(port, CHUNKED + b"3\r\nabc\r\n" + trailers)
    # llhttp refuses them (400); the pure-Python parser ignores trailers: never forwarded.
    assert status_of(answer) in {200, 400}
    for received in upstream.requests:
        assert received["body_bytes"] == 3
        assert [v for k, v in received["headers"] if k.lower() == "content-length"] in ([], ["3"])


async def test_a_huge_chunk_size_is_refused_or_cut_off(
    port: int, upstream: RecordingUpstream
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await exchange(port, BIG_CHUNKED + b"f" * 20 + b"\r\nabc")
    # The C parser refuses the size (400); the pure-Python one reads it, and the body
    # timeout ends the wait for bytes that never come (408). Either way, bounded.
    assert status_of(answer) in {400, 408}
    assert loop.time() - started < 3
    assert upstream.requests == []


async def test_a_chunked_body_over_the_cap_aborts_the_upstream_request(
    start_proxy: StartProxy, aiohttp_raw_server: AiohttpRawServer
) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def reads_the_body(request: web.BaseRequest) -> web.Response:
        try:
            await request.read()
        except BaseException as exc:  # a lost connection may cancel the handler
            outcome.set_result(type(exc).__name__)
            raise
        else:
            outcome.set_result("complete")
        return web.Response()

    server = await aiohttp_raw_server(reads_the_body, access_log=None)
    proxy = await start_proxy(
        {
            "server": {"max_body": "1KiB"},
            "connectors": {"api": connector(str(server.make_url("")))},
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(CHUNKED + b"200\r\n" + b"x" * 512 + b"\r\n")  # starts the upstream request
        await asyncio.sleep(0.2)
        writer.write(b"300\r\n" + b"x" * 768 + b"\r\n")  # 1280 bytes in all: over the cap
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert status_of(head) == 413
            assert await outcome != "complete"  # cut off, never a complete request
    finally:
        writer.close()


async def test_a_compressed_body_counts_as_sent_and_is_never_inflated(
    port: int, upstream: RecordingUpstream
) -> None:
    compressed = gzip.compress(b"\0" * 1_000_000)  # about 1 KiB on the wire, 1 MB inflated
    assert len(compressed) <= 1024
    data = HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    answer = await exchange(port, data % len(compressed) + compressed)
    assert status_of(answer) == 200
    received = upstream.last
    assert (received["body_bytes"], received["body_sha256"]) == (
        len(compressed),
        sha256(compressed),
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
