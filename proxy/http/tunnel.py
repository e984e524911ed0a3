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


def refuse_port(host: str, port: int) -> ConnectNotSupportedError:
    return ConnectNotSupportedError(
        f"CONNECT to {host}:{port} is not served: only port 80 is tunnelled (as plain HTTP); "
        "https needs tls_intercept, which this version does not have: send http:// requests "
        "to the proxy instead"
    )


async def serve_tunnel(
    request: web.BaseRequest, host: str, new_connection: NewConnection
) -> web.StreamResponse:
    """Answer 200, hand the socket to a new connection handler bound to ``host``, and return
    once the tunnel is closed (the answer returned then goes nowhere: the socket is gone)."""
    transport = request.transport
    outer = request.protocol
    assert transport is not None
    transport.write(ESTABLISHED)
    inner = new_connection()
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    inner.tunnel_host = host  # type: ignore[attr-defined]  # the gateway routes by it
    inner.tunnel_closed = closed  # type: ignore[attr-defined]
    # What the client sent right after the CONNECT's headers is the tunnel's first bytes.
    tail, outer._message_tail = outer._message_tail, b""
    transport.set_protocol(inner)
    inner.connection_made(transport)
    if tail:
        inner.data_received(tail)
    await closed
    response = web.Response(status=200)
    response.force_close()
    return response
