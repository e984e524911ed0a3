"""``CONNECT host:80``: a plain tunnel served as HTTP, never relayed blindly.

Clients such as Node's undici open ``CONNECT`` even for ``http://`` targets. For a host in a
connector's ``hosts`` on port 80 the proxy answers ``200 Connection Established`` and then
serves the tunnel as one more HTTP/1.1 connection of its own: a new connection handler
takes the socket over, with the same parser limits, header filtering, injection, re-auth and
access log as any request, keep-alive included. Each request inside must name the tunnel's
host (``Host`` or an absolute-form target); anything else is refused. The ``clients`` checks
ran on the ``CONNECT`` itself (its ``Proxy-Authorization``), as a browser's or undici's proxy
agent sends the key only there.

Any other ``CONNECT`` is refused: to a host no connector lists, 404 ``no_route``; to another
port, 405 ``connect_not_supported`` (TLS to port 443 would need interception).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.errors import BadRequestError, ConnectNotSupportedError

ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"

NewConnection = Callable[[], RequestHandler]
"""Makes the connection handler that serves a tunnel (the server's own kind)."""


def connect_target(raw: str) -> tuple[str, int]:
    """``host:port`` of a CONNECT request (RFC 9110 §9.3.6), the host lower-cased."""
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise BadRequestError("CONNECT needs a host:port target")
    return host.lower().strip("[]"), int(port)


def refuse_port(host: str, port: int, intercepting: bool) -> ConnectNotSupportedError:
    https = "port 443 with the local CA" if intercepting else "443 only with tls_intercept"
    return ConnectNotSupportedError(
        f"CONNECT to {host}:{port} is not served: port 80 is tunnelled as plain HTTP, "
        f"{https}; or send http:// requests to the proxy"
    )


async def serve_tunnel(
    request: web.BaseRequest,
    host: str,
    new_connection: NewConnection,
    tls: ssl.SSLContext | None = None,
    *,
    client: str | None = None,
) -> web.StreamResponse:
    """Answer 200, hand the socket to a new connection handler bound to ``host`` (after a
    TLS handshake as that host with ``tls``), and return once the tunnel is closed (the
    answer returned then goes nowhere: the socket is gone). ``client``: the name of the
    client whose key the CONNECT carried; the requests inside are that client's."""
    transport = request.transport
    outer = request.protocol
    assert transport is not None
    transport.write(ESTABLISHED)
    inner = new_connection()
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    inner.tunnel_host = host  # type: ignore[attr-defined]  # the gateway routes by it
    inner.tunnel_client = client  # type: ignore[attr-defined]
    inner.tunnel_closed = closed  # type: ignore[attr-defined]
    # What the client sent right after the CONNECT's headers is the tunnel's first bytes.
    tail, outer._message_tail = outer._message_tail, b""
    if tls is None:
        transport.set_protocol(inner)
        inner.connection_made(transport)
        if tail:
            inner.data_received(tail)
    else:
        early = _Early()  # what arrives between the handshake and the handler taking over
        try:  # a client that does not trust the local CA ends here: nothing was forwarded
            secure = await loop.start_tls(
                transport, early, tls, server_side=True, ssl_handshake_timeout=10
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            transport.close()
            closed.set_result(None)
        else:
            assert secure is not None
            secure.set_protocol(inner)
            inner.connection_made(secure)
            if early.data:
                inner.data_received(bytes(early.data))
            if early.lost:
                inner.connection_lost(None)
    await closed
    response = web.Response(status=200)
    response.force_close()
    return response


class _Early(asyncio.Protocol):
    """Holds a TLS tunnel's first bytes until its connection handler is attached (start_tls
    makes no connection_made call of its own)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
