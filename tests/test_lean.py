"""The lean connection (proxy/http/lean.py): the requests it answers, the ones it hands to
aiohttp's handler mid-connection, and answers byte for byte as aiohttp writes them.

Runs on both HTTP parsers (the Makefile's client-input suite)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from io import BytesIO
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from aiohttp.http_writer import StreamWriter
from aiohttp.payload import BytesIOPayload

from proxy.http.lean import LeanListener
from proxy.http.server import _ProxyHTTPServer
from proxy.http.wire import encode
from proxy.logs import ACCESS_LOGGER
from tests.conftest import (
    RunningProxy,
    StartProxy,
    connector,
    eventually,
    hold_answers,
    raw_request,
    status_of,
    upstream_received,
)
from tests.fakes import RawUpstream, RecordingUpstream

# --- the bytes of an answer: proxy/http/wire.py against aiohttp's own writer ---------------


class _Captured(BaseProtocol):
    """A connection whose transport keeps what is written (aiohttp's writer needs one)."""

    ssl_context = peername = sockname = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.written = bytearray()
        self.transport = self  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += b"".join(chunks)

    def is_closing(self) -> bool:
        return False


def _request(head: bytes) -> tuple[web.BaseRequest, _Captured]:
    loop = asyncio.get_running_loop()
    protocol = _Captured(loop)
    parser = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
    (message, payload), *_ = parser.feed_data(head)[0]
    writer = StreamWriter(protocol, loop)
    return web.BaseRequest(message, payload, protocol, writer, None, loop), protocol  # type: ignore[arg-type]


def _without_date(data: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", data)


_V11, _V10 = b"HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.0\r\nHost: h\r\n\r\n"
_V10_KEEP = b"HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
_V11_CLOSE = b"HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
ANSWERS: dict[str, tuple[bytes, dict[str, Any]]] = {
    "small-json": (
        b"GET /x " + _V11,
        {"status": 200, "body": b'{"a":1}', "content_type": "application/json"},
    ),
    "no-content-type": (b"GET /x " + _V11, {"status": 200, "body": b"raw"}),
    "empty-200": (b"GET /x " + _V11, {"status": 200, "body": b""}),
    "no-body-object": (b"GET /x " + _V11, {"status": 200}),
    "204": (b"GET /x " + _V11, {"status": 204, "body": b""}),
    "304-with-length": (b"GET /x " + _V11, {"status": 304, "headers": {"Content-Length": "12"}}),
    "head": (b"HEAD /x " + _V11, {"status": 200, "body": b"twelve bytes"}),
    "head-empty": (b"HEAD /x " + _V11, {"status": 200, "body": b""}),
    "head-404-length": (b"HEAD /x " + _V11, {"status": 404, "headers": {"Content-Length": "9"}}),
    "reason-and-server": (
        b"GET /x " + _V11,
        {
            "status": 599,
            "reason": "Odd Reason",
            "body": b"x",
            "headers": {"Server": "nginx", "Date": "Mon, 07 Dec 2026 10:00:00 GMT"},
        },
    ),
    "explicit-length": (
        b"DELETE /x " + _V11,
        {"status": 202, "body": b"abc", "headers": {"Content-Length": "3"}},
    ),
    "http10-close": (b"GET /x " + _V10, {"status": 200, "body": b"old"}),
    "http10-keep-alive": (b"GET /x " + _V10_KEEP, {"status": 200, "body": b"old"}),
    "client-close": (b"GET /x " + _V11_CLOSE, {"status": 200, "body": b"bye"}),
    "forced-close": (b"GET /x " + _V11, {"status": 502, "body": b"{}", "close": True}),
    "multi-valued": (
        b"GET /x " + _V11,
        {"status": 200, "body": b"m", "headers": [("Set-Thing", "a"), ("Set-Thing", "b")]},
    ),
}


def _response(spec: dict[str, Any]) -> web.Response:
    response = web.Response(
        status=spec["status"],
        reason=spec.get("reason"),
        body=spec.get("body"),
        content_type=spec.get("content_type"),
        headers=spec.get("headers"),
    )
    if spec.get("close"):
        response.force_close()
    return response


@pytest.mark.parametrize("case", ANSWERS)
async def test_an_answer_is_the_bytes_aiohttp_would_send(case: str) -> None:
    head, spec = ANSWERS[case]
    request, _ = _request(head)
    encoded = encode(request, _response(spec))
    assert encoded is not None
    data, keep = encoded

    request, protocol = _request(head)
    expected = _response(spec)
    await expected.prepare(request)
    await expected.write_eof()
    assert _without_date(data) == _without_date(bytes(protocol.written))
    assert b"\r\nDate: " in data
    assert keep == expected.keep_alive


@pytest.mark.parametrize("kind", ["stream", "prepared", "compressed", "cookie", "payload"])
async def test_what_only_aiohttp_can_write_is_left_to_it(kind: str) -> None:
    request, _ = _request(b"GET /x " + _V11)
    response: web.StreamResponse = web.Response(body=b"x")
    if kind == "stream":
        response = web.StreamResponse()
    elif kind == "prepared":
        await response.prepare(request)
    elif kind == "compressed":
        response.enable_compression()
    elif kind == "cookie":
        response.set_cookie("a", "b")
    else:
        response = web.Response(body=BytesIOPayload(BytesIO(b"x")))
    assert encode(request, response) is None


# --- one connection, served lean, then handed over ----------------------------------------

GET = b"GET /api/%d HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _http(proxy: RunningProxy) -> _ProxyHTTPServer:
    """The proxy's listening server: its lean connections and aiohttp's handlers."""
    http = proxy.server._http
    assert isinstance(http, _ProxyHTTPServer)
    return http


def _lean(proxy: RunningProxy) -> LeanListener:
    listener = _http(proxy).lean
    assert listener is not None
    return listener


def _lean_connections(proxy: RunningProxy) -> int:
    return len(_lean(proxy).connections)


async def _answers(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """``count`` whole answers with Content-Length bodies, read within 5 seconds."""
    answers = []
    async with asyncio.timeout(5):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            answers.append(head + body)
    return answers


POST = b"POST /api/3 HTTP/1.1\r\nHost: localhost\r\n"
LARGE = b"x" * 100_000
BODIES = {
    # what is written (a piece per read), whether the connection stays the lean one, and
    # the statuses of what is answered after the two GETs before it
    "whole-in-one-read": ([POST + b"Content-Length: 5\r\n\r\nhello"], True, [200, 200]),
    "split-over-reads": ([POST + b"Content-Length: 5\r\n\r\n", b"hello"], False, [200, 200]),
    "chunked": (
        [POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
        False,
        [200, 200],
    ),
    "expect-continue": (
        [POST + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"],
        False,
        [100, 200, 200],
    ),
    "request-behind": (
        [POST + b"Content-Length: 5\r\n\r\nhello" + GET % 9],
        False,
        [200, 200, 200],
    ),
    "over-64k": ([POST + b"Content-Length: 100000\r\n\r\n" + LARGE], False, [200, 200]),
}


@pytest.mark.parametrize("case", BODIES)
async def test_a_body_is_taken_lean_only_when_it_ends_the_read_and_aiohttp_takes_the_rest(
    api_proxy: RunningProxy, upstream: RecordingUpstream, case: str
) -> None:
    pieces, stays_lean, statuses = BODIES[case]
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        for n in (1, 2):
            writer.write(GET % n)
            assert status_of((await _answers(reader, 1))[0]) == 200
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # separate reads on the proxy's side
        writer.write(GET % 4)
        answers = await _answers(reader, len(statuses))
        assert [status_of(a) for a in answers] == statuses
        assert _lean_connections(api_proxy) == int(stays_lean)
        assert api_proxy.server.client_connections == 1  # the same connection throughout
    finally:
        writer.close()
    paths = [r["path"] for r in upstream.requests]
    assert paths == [f"/base/{n}" for n in (1, 2, 3, *([9] if case == "request-behind" else []), 4)]
    assert upstream.requests[2]["body_bytes"] == (100_000 if case == "over-64k" else 5)


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([GET % 1 + GET % 2], id="two-in-one-read"),
        pytest.param([GET % 1 + GET[:9], GET[9:] % 2], id="second-split"),
        pytest.param([(GET % 1)[:20], (GET % 1)[20:], GET % 2], id="first-split"),
        pytest.param([GET % 1, b"", GET % 2], id="one-by-one"),
    ],
)
async def test_requests_are_answered_in_order_however_they_arrive(
    api_proxy: RunningProxy, upstream: RecordingUpstream, pieces: list[bytes]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # separate reads on the proxy's side
        answers = await _answers(reader, 2)
    finally:
        writer.close()
    assert [status_of(a) for a in answers] == [200, 200]
    assert [r["path"] for r in upstream.requests] == ["/base/1", "/base/2"]


async def test_a_request_that_arrives_while_one_is_answered_waits_its_turn(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    release = hold_answers(upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(GET % 1)
        await eventually(lambda: upstream_received(upstream))
        writer.write(GET % 2)
        await asyncio.sleep(0.1)
        assert len(upstream.requests) == 1  # one at a time, as aiohttp's handler answers
        release.set()
        answers = await _answers(reader, 2)
    finally:
        writer.close()
    assert [a.endswith(b"finished") for a in answers] == [True, True]


@pytest.mark.parametrize(
    ("head", "connection", "stays_open"),
    [
        (b"HTTP/1.1\r\nHost: localhost\r\n\r\n", None, True),
        (b"HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"close", False),
        (b"HTTP/1.0\r\nHost: localhost\r\n\r\n", None, False),
        (b"HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n", b"keep-alive", True),
    ],
    ids=["http11", "http11-close", "http10", "http10-keep-alive"],
)
async def test_the_connection_outlives_an_answer_only_when_both_sides_keep_it(
    api_proxy: RunningProxy, head: bytes, connection: bytes | None, stays_open: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(b"GET /api/x " + head)
        (answer,) = await _answers(reader, 1)
        found = re.search(rb"(?i)\r\nconnection: ([^\r]*)", answer)
        assert (found.group(1).lower() if found else None) == connection
        async with asyncio.timeout(5):
            if stays_open:
                writer.write(b"GET /api/y " + head)
                assert status_of((await _answers(reader, 1))[0]) == 200
            else:
                assert await reader.read() == b""  # closed after the answer
    finally:
        writer.close()


async def test_a_head_answer_has_the_length_and_no_body_and_the_next_request_frames_right(
    api_proxy: RunningProxy,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(b"HEAD /api/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status_of(head) == 200 and re.search(rb"(?i)\r\ncontent-length: [1-9]", head)
        writer.write(GET % 2)
        (second,) = await _answers(reader, 1)  # starts right after the HEAD's head
        assert status_of(second) == 200 and b'"/base/2"' in second
    finally:
        writer.close()


@pytest.mark.parametrize(
    "garbage", [b"\x16\x03\x01\x02\x00\r\n\r\n", b"GET /api/x HTTP/1.1\r\nX A: b\r\n\r\n"]
)
async def test_bad_bytes_after_lean_requests_get_the_contracts_400(
    api_proxy: RunningProxy, garbage: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(GET % 1)
        assert status_of((await _answers(reader, 1))[0]) == 200
        writer.write(garbage)
        async with asyncio.timeout(5):
            answer = await reader.read()  # until the proxy closes
    finally:
        writer.close()
    assert status_of(answer) == 400 and b'"error":"bad_request"' in answer


async def test_a_real_client_keeps_one_connection_across_lean_and_handed_over_requests(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    def session_requests() -> list[int]:
        with requests.Session() as session:
            base = api_proxy.url + "/api"
            codes = [session.get(f"{base}/{n}", timeout=5).status_code for n in range(3)]
            codes.append(session.post(f"{base}/post", data=b"body", timeout=5).status_code)
            codes += [session.head(f"{base}/{n}", timeout=5).status_code for n in range(2)]
            return codes

    assert await asyncio.to_thread(session_requests) == [200] * 6
    assert upstream.requests[3]["body_bytes"] == 4


async def test_curl_reuses_one_connection_for_gets_a_post_and_a_head(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    base = api_proxy.url + "/api"
    segments = [[f"{base}/1"], [f"{base}/2"], ["-d", "body", f"{base}/3"], [f"{base}/4"]]
    segments.append(["-I", f"{base}/5"])
    command = ["curl", "-s", "--max-time", "5"]
    for index, segment in enumerate(segments):
        command += [*(["--next"] if index else []), "-o", "/dev/null"]
        command += ["-w", "%{http_code} %{num_connects}\n", *segment]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    output, _ = await asyncio.wait_for(process.communicate(), 10)
    # One connection made by the first request, reused by all the others.
    assert output.decode().split() == ["200", "1", *(["200", "0"] * 4)]
    assert [r["method"] for r in upstream.requests] == ["GET", "GET", "POST", "GET", "HEAD"]
    assert upstream.requests[2]["body_bytes"] == 4


# --- flow control, deadlines and logs, as aiohttp's handler keeps them (a review's findings) --


async def test_a_client_that_stops_reading_is_sent_no_more_answers(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    async def large(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"x" * 32768)

    upstream.respond = large
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", api_proxy.port)), 5)
        served = 0
        for n in range(300):  # one at a time, never reading an answer
            await asyncio.wait_for(loop.sock_sendall(sock, GET % n), 5)
            try:
                async with asyncio.timeout(0.5):
                    while len(upstream.requests) == served:  # noqa: ASYNC110 - its own state
                        await asyncio.sleep(0.005)
            except TimeoutError:
                break  # the proxy waits for the client to read: what aiohttp's drain does
            served += 1
        buffered = sum(
            c.transport.get_write_buffer_size()
            for c in _http(api_proxy).connections
            if c.transport is not None
        )
    assert served < 300 and buffered < 2**20  # was: all 300 answered, 7 MB held in the proxy


async def test_a_connection_handed_over_keeps_aiohttps_read_pause(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    release = hold_answers(upstream)
    _, writer = await asyncio.open_connection("127.0.0.1", api_proxy.port)
    try:
        writer.write(b"".join(GET % n for n in range(40)))  # aiohttp queues 32, then pauses
        await asyncio.sleep(0.2)
        (handler,) = _http(api_proxy).connections
        assert handler.transport is not None
        assert not handler.transport.is_reading()  # was resumed by the hand-over: no limit
    finally:
        release.set()
        writer.close()


async def test_the_idle_deadline_carries_over_to_aiohttps_handler(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(
        {"server": {"keepalive_timeout": 1}, "connectors": {"api": connector(upstream.url)}}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    loop = asyncio.get_running_loop()
    try:
        writer.write(GET % 1)
        await _answers(reader, 1)
        answered = loop.time()
        await asyncio.sleep(0.8)
        writer.write(b"GET /api/2 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # handed over
        async with asyncio.timeout(5):
            while await reader.read(1024):  # until the proxy closes
                pass
    finally:
        writer.close()
    assert loop.time() - answered < 1.5  # one deadline in all, not a new one at the hand-over


async def test_an_answer_the_upstream_cuts_off_is_logged_aborted(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    upstream = await RawUpstream([cut, b"5\r\nhello\r\n"]).start()
    try:
        proxy = await start_proxy(
            {"connectors": {"api": connector(f"http://127.0.0.1:{upstream.port}")}}
        )
        with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
            await raw_request(proxy.port, GET % 1, until_close=True)
            await asyncio.sleep(0.1)
    finally:
        await upstream.close()
    (line,) = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert '"GET /api/1 HTTP/1.1" 200' in line and line.endswith(" aborted")


async def test_a_gateway_that_fails_gets_the_contracts_500_and_a_closed_connection(
    api_proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError("a bug, with a secret in its text: tok_static_test_value")

    _lean(api_proxy).handler = broken
    answer = await raw_request(api_proxy.port, GET % 1, until_close=True)
    assert status_of(answer) == 500 and b'"error":"internal_error"' in answer
    assert b"\r\nConnection: close\r\n" in answer
    assert "internal error answering a request: RuntimeError" in caplog.text
    assert "tok_static" not in caplog.text and b"tok_static" not in answer


class _RecordingTransport(asyncio.Transport):
    """Records what the connection asks of its transport's reading."""

    def __init__(self) -> None:
        super().__init__()
        self.reading: list[str] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        self.reading.append("pause")

    def resume_reading(self) -> None:
        self.reading.append("resume")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def test_held_bytes_keep_reading_paused_while_the_request_reads_its_body() -> None:
    go, body_read = asyncio.Event(), asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await go.wait()
        await request.content.read()  # its stream asks the connection to resume reading
        body_read.set()
        await asyncio.Event().wait()  # still answering when the test looks (then cancelled)
        raise AssertionError("unreachable")

    listener = LeanListener(
        handler=handler,
        hand_over=lambda: pytest.fail("handed over"),  # type: ignore[arg-type,return-value]
        internal_error=lambda: web.Response(status=500),
        access=None,
        keepalive_timeout=10,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=128,
    )
    connection, transport = listener(), _RecordingTransport()
    connection.connection_made(transport)
    connection.data_received(POST + b"Content-Length: 5\r\n\r\nhello")
    await asyncio.sleep(0)
    transport.reading.clear()  # (the parser's end of body asks for a resume: not paused then)
    connection.data_received(b"Z" * 70_000)  # pipelined while answering: past 64 KiB held
    assert transport.reading == ["pause"]
    go.set()
    await asyncio.wait_for(body_read.wait(), 5)
    assert transport.reading == ["pause"]  # was resumed by the body's read: one more read in
    connection.connection_lost(None)  # cancels the request
    await asyncio.sleep(0.01)
