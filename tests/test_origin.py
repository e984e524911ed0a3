"""DNS rebinding and cross-site browser requests never get the credential."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import StartProxy, connector, raw_request, status_of
from tests.fakes import RecordingUpstream


@pytest.fixture
async def proxy_port(start_proxy: StartProxy, upstream: RecordingUpstream) -> int:
    proxy = await start_proxy(
        {
            "listen": {
                "allowed_hosts": ["tokenproxy.egress.svc"],
                "allowed_origins": ["https://app.example.com"],
            },
            "connectors": {
                "api": connector(upstream.url, hosts=["api.example.com"]),
                "web": connector(upstream.url, route="/web", allow_browser=True),
            },
        }
    )
    return proxy.port


async def status(port: int, path: str, **headers: Any) -> int:
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    request = f"GET {path} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode()
    return status_of(await raw_request(port, request, until_close=True))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("attacker.example:8080", 421),
        ("attacker.example", 421),
        ("127.0.0.1.nip.example", 421),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("10.1.2.3:8080", 200),  # an IP literal: no name to rebind
        ("tokenproxy.egress.svc", 200),
        ("api.example.com", 200),
    ],
)
async def test_host_must_name_this_proxy(
    proxy_port: int, upstream: RecordingUpstream, host: str, expected: int
) -> None:
    got = await status(proxy_port, "/api/x", Host=host.format(port=proxy_port))
    assert got == expected
    assert len(upstream.requests) == (1 if expected == 200 else 0)


async def test_a_remembered_host_verdict_never_lets_another_host_through(
    proxy_port: int, upstream: RecordingUpstream
) -> None:
    """Accepted Host values are remembered verbatim, a bounded number of them; a refused one
    is refused again, and a flood of accepted IP literals leaves later names checked."""
    for _ in range(2):
        assert await status(proxy_port, "/api/x", Host="attacker.example") == 421
        assert await status(proxy_port, "/api/x", Host="localhost") == 200
    for last in range(100):  # more distinct accepted values than are remembered
        assert await status(proxy_port, "/api/x", Host=f"10.0.0.{last}") == 200
    assert await status(proxy_port, "/api/x", Host="LOCALHOST ") == 200
    assert await status(proxy_port, "/api/x", Host="attacker.example:80") == 421
    assert len(upstream.requests) == 103


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/api/x", {"Origin": "http://attacker.example:8080"}, 403),
        ("/api/x", {"Origin": "null"}, 403),
        ("/api/x", {"Sec-Fetch-Site": "cross-site"}, 403),
        ("/api/x", {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403),
        ("/api/x", {"Origin": "https://app.example.com"}, 200),
        ("/api/x", {"Origin": "https://APP.example.com/"}, 200),
        ("/api/x", {"Origin": "http://localhost"}, 200),  # the proxy's own origin
        ("/api/x", {"Sec-Fetch-Site": "same-site"}, 200),
        ("/api/x", {"Sec-Fetch-Site": "none"}, 200),  # typed into the address bar
        ("/web/x", {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, 200),
        ("/_proxy/connectors", {"Origin": "https://evil.example"}, 403),
        ("/_proxy/connectors", {"Sec-Fetch-Site": "cross-site"}, 403),
    ],
)
async def test_cross_site_browser_requests_need_allow_browser(
    proxy_port: int,
    upstream: RecordingUpstream,
    path: str,
    headers: dict[str, str],
    expected: int,
) -> None:
    assert await status(proxy_port, path, Host="localhost", **headers) == expected
    assert len(upstream.requests) == (1 if expected == 200 and path != "/_proxy/connectors" else 0)


async def test_a_post_from_a_cross_site_form_is_refused_with_the_contract_error(
    proxy_port: int, upstream: RecordingUpstream
) -> None:
    answer = await raw_request(
        proxy_port,
        b"POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
        b"Sec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    )
    assert status_of(answer) == 403
    assert b'"error":"forbidden"' in answer and b'"connector":"api"' in answer
    assert upstream.requests == []
