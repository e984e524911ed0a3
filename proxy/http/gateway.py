"""The request handler: checks, routing and dispatch, in the order that keeps outsiders cheap.

1. protocol version (HTTP/1.0 and 1.1 only); client address and key (not for probes from
   loopback); CONNECT/TRACE;
2. the raw target, parsed and validated once (:mod:`proxy.http.target`); ``Host`` must name
   this proxy (:mod:`proxy.http.origin`);
3. admin endpoints (origin-form paths under ``admin.prefix`` only), never cross-site;
4. the connector: no match is 404 without any credential work; a cross-site browser
   request only where the connector allows browsers;
5. forwarding.

Every :class:`~proxy.errors.ProxyError` becomes the contract's JSON error with a
``Proxy-Status`` header; anything else is logged by type and answered 500, with no detail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import orjson
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11

from proxy.admin import AdminApi
from proxy.config.models import Settings
from proxy.connectors import Connector
from proxy.errors import (
    BadRequestError,
    HeadersTooLargeError,
    MethodNotAllowedError,
    MisdirectedRequestError,
    ProxyError,
    RouteNotFoundError,
)
from proxy.http.access import ClientAccess
from proxy.http.forwarding import abort_client, forward
from proxy.http.origin import BrowserGuard
from proxy.http.requestid import HEADER as REQUEST_ID
from proxy.http.requestid import take_request_id
from proxy.http.routing import Match
from proxy.http.target import Target, check_method, parse_target
from proxy.http.tunnel import NewConnection, connect_target, refuse_port, serve_tunnel
from proxy.logs import RequestFacts, facts_key
from proxy.metrics.registry import METRICS
from proxy.runtime import Runtime

if TYPE_CHECKING:
    from proxy.http.reload import Reload

logger = logging.getLogger(__name__)

PROXY_NAME = "tokenproxy"


def error_response(exc: ProxyError) -> web.Response:
    body = {"error": exc.code, "message": exc.message, "connector": exc.connector}
    status = f"{PROXY_NAME}; error={exc.proxy_status}"
    if exc.details:
        status += f'; details="{exc.details}"'  # constant text: nothing to escape
    headers = {"Proxy-Status": status, **exc.headers}
    response = web.Response(
        status=exc.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )
    if exc.close_connection:
        response.force_close()
    return response


class Gateway:
    """The requests of one config (a reload makes a new gateway beside this one)."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        reload: Reload | None = None,
        new_connection: NewConnection | None = None,
    ) -> None:
        """``new_connection``: makes the handler that serves a CONNECT tunnel (None: no
        tunnels, for a gateway without a listener of its own)."""
        self.runtime = runtime
        self._new_connection = new_connection
        self.access = ClientAccess(settings.clients)
        self.browsers = BrowserGuard(settings)
        self.max_header_bytes = int(settings.server.max_header_bytes)
        self.admin = AdminApi(settings.admin, runtime, reload)
        self.active = 0
        """Requests being answered by this gateway now."""
        self._idle = asyncio.Event()

    async def drained(self) -> None:
        """Return once no request is being answered (a retired gateway's last ones)."""
        while self.active:
            self._idle.clear()
            await self._idle.wait()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        facts = request[facts_key] = RequestFacts(started)
        METRICS.in_flight += 1
        self.active += 1
        status = 500
        try:
            response = await self._answer(request, facts)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away first (nginx's code for it)
            raise
        finally:
            METRICS.in_flight -= 1
            self.active -= 1
            if not self.active:
                self._idle.set()
            elapsed = time.perf_counter() - started
            connector = facts.connector or ""
            METRICS.request_done(connector, status, elapsed)
            if facts.client is not None:
                METRICS.client_requests[connector, facts.client] += 1

    async def _answer(self, request: web.BaseRequest, facts: RequestFacts) -> web.StreamResponse:
        request_id = facts.request_id = take_request_id(request)
        try:
            response = await self._handle(request, facts)
            if not response.prepared:  # a streamed answer carries it already
                response.headers[REQUEST_ID] = request_id
            return response
        except ProxyError as exc:
            if exc.connector is None:  # the one place an error learns its connector
                exc.connector = facts.connector
            if request.method == hdrs.METH_CONNECT:
                exc.close_connection, exc.linger = True, False  # what follows is not HTTP: now
            response = error_response(exc)
            response.headers[REQUEST_ID] = request_id
            if not exc.linger:
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()  # now, not after aiohttp's lingering read
            return response
        except Exception as exc:
            # No traceback: frames of the forwarding path hold headers with the credential.
            logger.error("internal error handling a request: %s", type(exc).__name__)
            if request.writer.output_size > 0:
                abort_client(request, facts)  # a response is half-sent: it must not look complete
            internal = ProxyError("internal error", connector=facts.connector)
            response = error_response(internal)
            response.headers[REQUEST_ID] = request_id
            return response

    def _handle(
        self, request: web.BaseRequest, facts: RequestFacts
    ) -> Awaitable[web.StreamResponse]:
        """Check and route ``request``; the answer to await. (It and :meth:`_forward` are
        plain functions handing on a coroutine: one of their own each, per request, bought
        nothing. What they raise, they raise when called, inside :meth:`_answer`'s ``try``.)"""
        method, raw_path = request.method, request.raw_path  # (properties: read once)
        if request.version not in (HttpVersion11, HttpVersion10):
            raise BadRequestError("only HTTP/1.0 and HTTP/1.1 are supported")
        check_method(method)
        header_bytes = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        if header_bytes > self.max_header_bytes:
            raise HeadersTooLargeError(
                f"the request headers are larger than {self.max_header_bytes} bytes in all"
            )
        # Probes from the same machine (/health, /ready) need neither an address nor a key:
        # they show no connector detail. Everything else, admin included, is guarded.
        protocol = request.protocol
        tunnel = getattr(protocol, "tunnel_host", None)
        probe = self.admin.is_probe(raw_path) and self.access.peer_is_loopback(request)
        if not probe:
            self.access.check_peer(request)
            # Inside a tunnel, the CONNECT carried the key: its client is the tunnel's.
            if tunnel is None:
                client = self.access.check_key(request)
            else:
                client = getattr(protocol, "tunnel_client", None)
            facts.client = client
        if method == hdrs.METH_CONNECT:
            return self._connect(request, facts, inside=tunnel is not None)
        if method == hdrs.METH_TRACE:
            # TRACE would echo the injected credential back to the client.
            raise MethodNotAllowedError("TRACE is not forwarded")

        target = parse_target(raw_path)
        if target.authority is None:
            self.browsers.check_host(request)  # absolute form: the authority routes instead
        if tunnel is not None:
            return self._in_tunnel(request, facts, target, tunnel)
        if target.authority is None and self.admin.owns(target.path):
            self.browsers.check_cross_site(request, allowed=self.admin.is_callback(target.path))
            return self.admin.handle(request, target.path)

        match = self.runtime.route(target, request.headers.get(hdrs.HOST))
        return self._forward(request, facts, match, target)

    def _forward(
        self,
        request: web.BaseRequest,
        facts: RequestFacts,
        match: Match[Connector] | None,
        target: Target,
    ) -> Awaitable[web.StreamResponse]:
        if match is None:
            raise RouteNotFoundError("no connector matches this request")
        facts.connector = match.target.name
        self.browsers.check_cross_site(request, allowed=match.target.config.allow_browser)
        return forward(request, facts, match.target, match.rest, target.query)

    async def _connect(
        self, request: web.BaseRequest, facts: RequestFacts, *, inside: bool
    ) -> web.StreamResponse:
        """Tunnel ``CONNECT host:80`` for a connector's host (:mod:`proxy.http.tunnel`)."""
        host, port = connect_target(request.raw_path)
        match = self.runtime.route(Target(path="/", query=None, authority=host), None)
        if match is None:
            raise RouteNotFoundError(f"no connector serves the host {host}")
        facts.connector = match.target.name
        intercept = self.runtime.intercept
        served = port == 80 or (port == 443 and intercept is not None)
        if not served or inside or self._new_connection is None:
            raise refuse_port(host, port, intercept is not None)
        tls = intercept.context_for(host) if port == 443 and intercept is not None else None
        return await serve_tunnel(request, host, self._new_connection, tls, client=facts.client)

    async def _in_tunnel(
        self, request: web.BaseRequest, facts: RequestFacts, target: Target, tunnel: str
    ) -> web.StreamResponse:
        """A request inside a tunnel: for the tunnel's host only, never the admin API."""
        named = target.authority or request.headers.get(hdrs.HOST) or ""
        name = named.lower().rsplit("@", 1)[-1].removesuffix(":80").removesuffix(":443")
        if name != tunnel:
            raise MisdirectedRequestError(
                f"this tunnel serves {tunnel} only; open another CONNECT for another host"
            )
        match = self.runtime.route(Target(target.path, target.query, tunnel), None)
        return await self._forward(request, facts, match, target)
