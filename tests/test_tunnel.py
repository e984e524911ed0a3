"""CONNECT tunnels (issue 15, first part): ``CONNECT host:80`` for a connector's host is
served as HTTP inside the tunnel, with the credential injected; nothing is ever relayed
blindly; hostile bytes inside get the answers they get outside."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import STATIC_TOKEN, StartProxy, connector, raw_request, status_of
from tests.fakes import RecordingUpstream
from tests.test_server import MALFORMED


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status_of(head), await reader.readexactly(length)


@pytest.fixture
async def tunnel_proxy(start_proxy: StartProxy, upstream: RecordingUpstream) -> int:
    other = connector(upstream.url, hosts=["other.test"], route="/other")
    api = connector(upstream.url, hosts=["api.test"])
    proxy = await start_proxy({"connectors": {"api": api, "other": other}})
    return proxy.port


async def test_a_plain_tunnel_is_served_as_http_with_the_credential(
    tunnel_proxy: int, upstream: RecordingUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel_proxy)
    try:
        async with asyncio.timeout(5):
            writer.write(b"CONNECT api.test:80 HTTP/1.1\r\nHost: api.test:80\r\n\r\n")
            assert await reader.readuntil(b"\r\n\r\n") == (
                b"HTTP/1.1 200 Connection Established\r\n\r\n"
            )
            for path in (b"/one", b"/two"):  # keep-alive inside the tunnel
                writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: api.test\r\n\r\n")
                status, body = await read_answer(reader)
                assert status == 200 and orjson.loads(body)["path"] == path.decode()
            writer.write(b"GET /_proxy/connectors HTTP/1.1\r\nHost: api.test\r\n\r\n")
            status, _ = await read_answer(reader)  # not the admin API: the upstream's path
            assert status == 200 and upstream.last["path"] == "/_proxy/connectors"
            writer.write(b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n")
            status, body = await read_answer(reader)
            assert status == 421 and b"this tunnel serves api.test only" in body
    finally:
        writer.close()
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(
    ("target", "status", "error", "says"),
    [
        (b"nowhere.test:80", 404, "no_route", "no connector serves the host nowhere.test"),
        (b"api.test:443", 405, "connect_not_supported", "tls_intercept"),
        (b"api.test:8080", 405, "connect_not_supported", "port 80 is tunnelled"),
        (b"api.test", 400, "bad_request", "host:port"),
    ],
)
async def test_no_blind_tunnels(
    tunnel_proxy: int,
    upstream: RecordingUpstream,
    target: bytes,
    status: int,
    error: str,
    says: str,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel_proxy)
    try:
        async with asyncio.timeout(5):
            writer.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
            got, body = await read_answer(reader)
            writer.write(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")  # bytes meant for a tunnel
            rest = await reader.read()  # the proxy closed: nothing relayed
    finally:
        writer.close()
    answer = orjson.loads(body)
    assert got == status and answer["error"] == error and says in answer["message"]
    assert rest == b"" and upstream.requests == []


async def test_client_keys_are_checked_on_the_connect(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    key = "sec_tunnel_client_key_0123456789"
    proxy = await start_proxy(
        {
            "clients": {"api_keys": [key]},
            "connectors": {"api": connector(upstream.url, hosts=["api.test"])},
        }
    )
    for offered, expected in ((b"", 403), (f"Proxy-Authorization: Bearer {key}\r\n".encode(), 200)):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            async with asyncio.timeout(5):
                writer.write(
                    b"CONNECT api.test:80 HTTP/1.1\r\nHost: api.test\r\n" + offered + b"\r\n"
                )
                head = await reader.readuntil(b"\r\n\r\n")
                assert status_of(head) == expected
                writer.write(b"GET /in HTTP/1.1\r\nHost: api.test\r\n\r\n")
                if expected == 200:  # inside: no key needed, the CONNECT carried it
                    assert (await read_answer(reader))[0] == 200
                else:  # refused, and closed: the bytes meant for the tunnel go nowhere
                    await reader.readuntil(b"}")
                    assert await reader.read() == b""
        finally:
            writer.close()
    assert [r["path"] for r in upstream.requests] == ["/in"]


CLIENTS = Path(__file__).resolve().parent / "clients"


async def undici_fetch(agent: str, proxy: str, target: str, *ca: str) -> tuple[str, str]:
    """Fetch ``target`` with undici's ``agent`` through ``proxy`` (trusting ``ca``, if
    given); the status and the body. Skips without Node or undici (fails under CI)."""
    needs_undici()
    process = await asyncio.create_subprocess_exec(
        "node", str(CLIENTS / "undici_fetch.mjs"), agent, proxy, target, *ca,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    status, _, body = out.decode().partition(" ")
    return status, body


def needs_undici() -> None:
    """Skip with the reason without Node or undici (a failure under CI, which installs them)."""
    missing = shutil.which("node") is None or not (CLIENTS / "node_modules" / "undici").is_dir()
    if missing:
        reason = "Node.js or undici is missing (make test installs undici with npm)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the undici tests: {reason}")
        pytest.skip(reason)


@pytest.mark.parametrize("agent", ["proxy", "env"])
async def test_node_undici_through_its_proxy_agents(
    tunnel_proxy: int, upstream: RecordingUpstream, agent: str
) -> None:
    """undici (the engine of Node's fetch) opens CONNECT even for http:// targets."""
    status, body = await undici_fetch(
        agent, f"http://127.0.0.1:{tunnel_proxy}", "http://api.test/orders?id=7"
    )
    assert status == "200" and orjson.loads(body)["path"] == "/orders"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]


@pytest.mark.parametrize(
    "args",
    [["{proxy}/api/prefixed"], ["-x", "{proxy}", "http://api.test/prefixed"]],
    ids=["route-prefix", "proxy-mode"],
)
async def test_curl_by_route_prefix_and_as_a_proxy(
    start_proxy: StartProxy, upstream: RecordingUpstream, args: list[str]
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, hosts=["api.test"])}})
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    command = ["curl", "-s", "--noproxy", "", *(a.format(proxy=proxy.url) for a in args)]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=20, env=environ
    )
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["path"] == "/prefixed"
    assert upstream.header_values("Authorization") == [f"Bearer {STATIC_TOKEN}"]


@pytest.mark.parametrize("name", sorted(MALFORMED), ids=sorted(MALFORMED))
async def test_hostile_bytes_inside_a_tunnel_get_the_answers_they_get_outside(
    tunnel_proxy: int, upstream: RecordingUpstream, name: str
) -> None:
    hostile = MALFORMED[name].replace(b"localhost", b"api.test")
    outside = await raw_request(tunnel_proxy, hostile)
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel_proxy)
    try:
        async with asyncio.timeout(10):
            writer.write(b"CONNECT api.test:80 HTTP/1.1\r\nHost: api.test\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.write(hostile)
            inside = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert status_of(inside) == status_of(outside) == 400
    assert upstream.requests == []
