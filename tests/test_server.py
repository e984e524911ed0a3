"""The listening side against hostile or odd clients, over raw sockets."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time

import aiohttp
import pytest

from proxy.http.server import http_parser_warning
from tests.conftest import RunningProxy, StartProxy, connector, raw_request, status_of
from tests.fakes import RecordingUpstream

GET = b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n"
POST = b"POST /api/x HTTP/1.1\r\nHost: localhost\r\n"

MALFORMED = {
    "cl-and-te": b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "plus-length": b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: +1\r\n\r\na",
    "negative-length": b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
    "empty-length": POST + b"Content-Length: \r\n\r\n",
    "list-length": POST + b"Content-Length: 1,1\r\n\r\na",
    "xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked-identity": b"POST /api/x HTTP/1.1\r\nHost: localhost\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n",
    "tab-before-colon": POST + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
    "vertical-tab-te": POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "kelvin-sign-te": POST + "Transfer-Encoding: chun\u212aed\r\n\r\n0\r\n\r\n".encode(),
    "chunk-extension-lf": POST + b"Transfer-Encoding: chunked\r\n\r\n1;a=\nb\r\nx\r\n0\r\n\r\n",
    "nul-in-value": GET + b"X-A: a\x00b\r\n\r\n",
    "cr-in-value": GET + b"X-A: a\rb\r\n\r\n",
    "obs-fold": GET + b"X-A: a\r\n b\r\n\r\n",
    "empty-name": GET + b": value\r\n\r\n",
    "bare-lf-header": GET + b"X-A: a\nX-B: b\r\n\r\n",
    "bare-lf-request": b"GET /api/x HTTP/1.1\nHost: localhost\n\n",
    "ctl-in-name": GET + b"X-\x01A: v\r\n\r\n",
    "space-in-name": GET + b"X A: v\r\n\r\n",
    "host-slash": b"GET /api/x HTTP/1.1\r\nHost: local/host\r\n\r\n",
    "host-query": b"GET /api/x HTTP/1.1\r\nHost: localhost?x\r\n\r\n",
    "host-fragment": b"GET /api/x HTTP/1.1\r\nHost: localhost#x\r\n\r\n",
    "host-userinfo": b"GET /api/x HTTP/1.1\r\nHost: user@localhost\r\n\r\n",
    "duplicate-host": b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nHost: y\r\n\r\n",
    "no-host-http11": b"GET /api/x HTTP/1.1\r\n\r\n",
    "http09": b"GET /api/x\r\n\r\n",
    "http2-line": b"GET /api/x HTTP/2.0\r\nHost: localhost\r\n\r\n",
    "http12": b"GET /api/x HTTP/1.2\r\nHost: localhost\r\n\r\n",
    "unknown-method": b"FOO /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "track": b"TRACK /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "raw-utf8-path": "GET /api/\u00e9 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
    "long-header": GET + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
    "long-line": b"GET /api/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "many-headers": GET + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
    "dot-segment": b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "encoded-slash": b"GET /api/..%2Fadmin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "backslash": b"GET /api/..\\admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "double-slash": b"GET //api/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "semicolon-dots": b"GET /api/x;/../../admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "encoded-nul": b"GET /api/%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_requests_get_400_and_never_reach_the_upstream(
    api_proxy: RunningProxy, upstream: RecordingUpstream, request_bytes: bytes
) -> None:
    answer = await raw_request(api_proxy.port, request_bytes)
    assert status_of(answer) == 400  # aiohttp echoes the client's version in the status line
    assert b"Proxy-Status: tokenproxy; error=http_request_error\r\n" in answer
    assert b'"error":"bad_request"' in answer
    assert upstream.requests == []


async def test_trace_is_405(api_proxy: RunningProxy, upstream: RecordingUpstream) -> None:
    """TRACE would echo the injected credential back (CONNECT: tests/test_tunnel.py)."""
    answer = await raw_request(api_proxy.port, b"TRACE /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(answer) == 405
    assert b"Proxy-Status: tokenproxy; error=http_request_denied" in answer
    assert b'"error":"method_not_allowed"' in answer
    assert upstream.requests == []


async def test_unknown_prefix_is_404_no_route(
    api_proxy: RunningProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    for path in ("/apix/y", "/other", "/"):
        async with client.get(api_proxy.url + path) as response:
            assert response.status == 404
            assert await response.json() == {
                "error": "no_route",
                "message": "no connector matches this request",
                "connector": None,
            }
            assert response.headers["Proxy-Status"] == "tokenproxy; error=destination_not_found"
    assert upstream.requests == []


async def test_absolute_form_and_host_header_select_by_hosts(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        {
            "connectors": {
                "api": connector(upstream.url + "/v2", hosts=["api.example.com"]),
                "other": connector(upstream.url + "/other", route="/other"),
            }
        }
    )
    # Forward-proxy style, as a legacy client with HTTP_PROXY set sends it.
    async with client.get("http://api.example.com/x?q=1", proxy=proxy.url) as response:
        assert response.status == 200
    assert (upstream.last["path"], upstream.last["query"]) == ("/v2/x", "q=1")
    # Host header naming a configured host, on an origin-form request.
    async with client.get(f"{proxy.url}/y", headers={"Host": "API.example.com:80"}) as response:
        assert response.status == 200
    assert upstream.last["path"] == "/v2/y"
    # An absolute-form request for an unlisted host is 404, whatever its path.
    async with client.get("http://evil.example/other/x", proxy=proxy.url) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "no_route"
    assert len(upstream.requests) == 2
    assert all(h != "evil.example" for r in upstream.requests for k, h in r["headers"])


UPGRADES = {
    "websocket": b"GET /api/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "websocket-with-body": b"POST /api/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    "h2c": b"GET /api/h2 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", UPGRADES.values(), ids=UPGRADES.keys())
async def test_upgrade_is_stripped_and_never_switches_protocols(
    api_proxy: RunningProxy, upstream: RecordingUpstream, request_bytes: bytes
) -> None:
    # Bytes sent behind it are neither passed through as a switched protocol nor read as a
    # request: the answer closes the connection (the same under both parsers).
    follow = b"GET /api/next HTTP/1.1\r\nHost: localhost\r\n\r\n"
    answer = await raw_request(api_proxy.port, request_bytes + follow, until_close=True)
    assert answer.count(b"HTTP/1.1 200 OK") == 1
    assert b"\r\nConnection: close\r\n" in answer
    assert b" 101 " not in answer
    (received,) = upstream.requests
    assert received["body_bytes"] == (5 if b"hello" in request_bytes else 0)
    names = {name.lower() for name, _ in received["headers"]}
    assert names.isdisjoint({"upgrade", "http2-settings", "connection"})


async def test_pipelined_requests_are_answered_in_order(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    # aiohttp queues at most 32 parsed requests and then stops reading: memory stays bounded.
    count = 1000
    requests = b"".join(
        b"GET /api/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(count - 1)
    )
    answer = await raw_request(
        api_proxy.port,
        requests + b"GET /api/last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        until_close=True,
    )
    assert answer.count(b"HTTP/1.1 200 OK") == count
    assert [r["path"] for r in upstream.requests] == [f"/base/{i}" for i in range(count - 1)] + [
        "/base/last"
    ]


@pytest.mark.parametrize("drip", [False, True], ids=["idle", "dripping-headers"])
async def test_slow_clients_are_closed_at_the_keepalive_deadline(
    start_proxy: StartProxy, upstream: RecordingUpstream, drip: bool
) -> None:
    proxy = await start_proxy(
        {"server": {"keepalive_timeout": 0.5}, "connectors": {"api": connector(upstream.url)}}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    try:
        if drip:
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        async with asyncio.timeout(5):
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 0.1)
                except TimeoutError:
                    if drip:
                        writer.write(b"x")  # one byte every 0.1 s, never ending the headers
                    continue
                if not data:
                    break
    finally:
        writer.close()
    assert time.monotonic() - started < 3
    assert upstream.requests == []


def test_pure_python_parser_is_reported() -> None:
    code = "from proxy.http.server import http_parser_warning; print(http_parser_warning())"
    environ = {k: v for k, v in os.environ.items() if k != "AIOHTTP_NO_EXTENSIONS"}
    native = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=environ,
    )
    assert native.stdout.strip() == "None"
    python = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
    )
    assert "pure-Python HTTP parser" in python.stdout


async def test_a_lowercase_method_is_never_forwarded_lowercase(
    api_proxy: RunningProxy, upstream: RecordingUpstream
) -> None:
    """The C parser refuses it; the pure-Python one normalizes it to GET: either way no
    server behind the upstream sees a method the proxy read differently."""
    answer = await raw_request(api_proxy.port, b"get /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    if http_parser_warning() is None:
        assert status_of(answer) == 400 and upstream.requests == []
    else:
        assert status_of(answer) == 200 and upstream.last["method"] == "GET"


VALID = {
    "get": GET + b"\r\n",
    "post": POST + b"Content-Length: 5\r\n\r\nhello",
    "chunked": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}
NASTY = [b"\r", b"\n", b"\r\n", b"\0", b":", b" ", b"\t", b"\x7f", b"\xff", b"%", b"/..", b"0\r\n"]


def response_statuses(answer: bytes) -> list[int]:
    """The status of each response in ``answer`` (framed by Content-Length, as ours are)."""
    statuses = []
    while answer:
        head, _, answer = answer.partition(b"\r\n\r\n")
        status_line, *fields = head.split(b"\r\n")
        # aiohttp echoes the client's version, odd ones too (HTTP/0.9, HTTP/1.2 get 400).
        assert re.fullmatch(rb"HTTP/\d\.\d \d{3} [^\r\n]*", status_line), status_line
        statuses.append(int(status_line.split(b" ", 2)[1]))
        pairs = (field.partition(b":") for field in fields)
        length = [int(value) for name, _, value in pairs if name.lower() == b"content-length"]
        answer = answer[length[0] if length else len(answer) :]
    return statuses


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """One to three random edits of a seed request: a nasty byte in, a span out or doubled."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        edit = rng.randrange(4)
        if edit == 0:
            data[at:at] = rng.choice(NASTY)
        elif edit == 1:
            del data[at : at + rng.randint(1, 8)]
        elif edit == 2:
            data[at:at] = data[at : at + rng.randint(1, 40)]
        else:
            data[at : at + 1] = bytes([rng.randrange(256)])
    return bytes(data)


async def test_fuzzed_requests_are_answered_or_closed_and_reach_the_upstream_only_whole(
    start_proxy: StartProxy, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Row A24: 400 mutations of the seed corpus (every case above) against a running proxy.

    Every answer is a well-formed HTTP status or a close, within the bounds; the upstream saw
    exactly as many requests as clients got its 200s, so nothing was forwarded that the
    client was told was refused; the proxy never logs an internal error and serves on.
    """
    proxy = await start_proxy(
        {
            "server": {"body_timeout": 0.3, "keepalive_timeout": 0.3},
            "connectors": {"api": connector(upstream.url + "/base")},
        }
    )
    rng = random.Random(20261202)  # fixed: a failure reproduces
    seeds = [*MALFORMED.values(), *UPGRADES.values(), *VALID.values()]
    cases = [mutate(rng.choice(seeds), rng) for _ in range(400)]
    answers: list[bytes] = []
    for start in range(0, len(cases), 40):  # 40 connections at a time
        batch = cases[start : start + 40]
        answers += await asyncio.gather(
            *(raw_request(proxy.port, case, until_close=True) for case in batch)
        )
    forwarded = 0
    for case, answer in zip(cases, answers, strict=True):
        statuses = response_statuses(answer)
        assert all(100 <= status <= 599 for status in statuses), (case, answer)
        forwarded += statuses.count(200)
    assert len(upstream.requests) == forwarded
    assert all(r["path"].startswith("/base") for r in upstream.requests)
    assert "internal error" not in caplog.text
    assert status_of(await raw_request(proxy.port, VALID["get"])) == 200
