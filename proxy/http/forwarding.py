"""Forward one request to a connector's upstream and stream the answer back: a pure pipe.

Guarantees:
- bodies stream both ways and are never decompressed. Two exceptions, both bounded: a
  request body up to ``reauth_max_body`` is held for a token connector, so the request can be
  replayed after a 401; an answer whose whole body arrived with its headers goes out in one
  write instead of a stream;
- the upstream sees the client's method, headers (filtered, see :mod:`proxy.http.headers`) and
  raw path and query bytes, under the connector's base path, with the connector's credential;
- redirects are relayed to the client, never followed;
- a request asking to switch protocols (``Upgrade``) never switches: it is answered over
  HTTP/1.1 and its connection closed, so bytes sent behind it are never read as requests
  (aiohttp's C parser would drop them silently, its pure-Python one would parse them);
- response framing is rebuilt from what the upstream actually sends; if the upstream fails
  after the response headers went out, the client connection is aborted, so a truncated body
  never looks complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.auth.base import Credential
from proxy.connectors import Connector
from proxy.egress.deadlines import ReadDeadline
from proxy.egress.failures import classify
from proxy.egress.http1.client import UpstreamAnswer
from proxy.errors import ProxyError, UpstreamError, UpstreamTimeoutError, UpstreamTLSError
from proxy.http.body import RequestBody
from proxy.http.headers import REQUEST_DROPPED, RESPONSE_DROPPED, filter_headers
from proxy.http.requestid import HEADER as REQUEST_ID
from proxy.logs import RequestFacts
from proxy.metrics.registry import METRICS

logger = logging.getLogger(__name__)

Body = bytes | AsyncIterator[bytes] | None
"""What goes upstream: nothing, a held (replayable) body, or the client's body streaming."""

Answer = UpstreamAnswer | aiohttp.ClientResponse
"""The upstream's answer, from the lean client or, behind an egress proxy, from aiohttp's."""


_UPSTREAM_ERRORS: dict[str, type[UpstreamError]] = {
    "connect_timeout": UpstreamTimeoutError,
    "timeout": UpstreamTimeoutError,
    "tls": UpstreamTLSError,
}


def upstream_error(
    exc: aiohttp.ClientError | TimeoutError, connector: Connector, body: RequestBody | None
) -> ProxyError:
    """What to answer for a failed send (logged here, once)."""
    if body is not None and body.failure is not None:
        return body.failure  # the client's body failed, not the upstream
    failure = classify(exc, "the upstream", tls=connector.upstream.uses_tls)
    error_class = _UPSTREAM_ERRORS.get(failure.kind, UpstreamError)
    error = error_class(failure.message, proxy_status=failure.proxy_status)
    error.worth_another_try = failure.worth_another_try
    logger.warning("connector %s: %s (%s)", connector.name, error.message, type(exc).__name__)
    return error


async def forward(
    request: web.BaseRequest,
    facts: RequestFacts,
    connector: Connector,
    rest: str,
    query: str | None,
) -> web.StreamResponse:
    auth = connector.authenticator_for(facts.client)
    retries, method = connector.retries, request.method
    headers = filter_headers(request.headers, REQUEST_DROPPED)
    headers[REQUEST_ID] = facts.request_id  # the client's, or the one made for it
    source: RequestBody | None = None
    body: Body = None
    if request.body_exists:
        source = RequestBody(request, idle_timeout=connector.body_timeout, limit=connector.max_body)
        length = request.content_length
        if length is not None:
            # Keep the client's framing: many APIs refuse chunked uploads.
            headers[hdrs.CONTENT_LENGTH] = str(length)
        limit = max(auth.replay_limit if auth.reauth_on else 0, retries.body_limit(method))
        if length is not None and length <= limit:
            body = await source.read_all()  # small enough to send again (401, retries)
        else:
            body = source.chunks()
    # Not isinstance(body, AsyncIterator): an ABC check costs a microsecond per request.
    replayable = body is None or isinstance(body, bytes)
    tries = retries.begin(connector.name, method, replayable=replayable)

    def send(credential: Credential | None) -> Awaitable[Answer]:
        return tries.send(
            lambda: _send(request, facts, connector, rest, query, headers, body, source, credential)
        )

    try:
        upstream = await auth.send(send, replay=lambda: tries.take("reauth"))
    finally:
        facts.retries = tries.made
    try:
        return await _relay(request, facts, upstream, connector)
    finally:
        # Never leave a half-read connection in the pool (docs/design.md, "Hardening decisions").
        upstream.close()


async def _send(
    request: web.BaseRequest,
    facts: RequestFacts,
    connector: Connector,
    rest: str,
    query: str | None,
    headers: CIMultiDict[str],
    body: Body,
    source: RequestBody | None,
    credential: Credential | None,
) -> Answer:
    headers = headers.copy()
    if credential is not None:
        query = credential.apply(headers, query)
    egress = connector.upstream
    started = time.perf_counter()
    upstream: Answer
    try:  # (not a context manager: this is the hot path, and one costs microseconds)
        with egress.read_deadline():  # the response headers, in time
            if egress.http1 is not None:
                target = connector.upstream_target(rest, query)
                upstream = await egress.http1.request(request.method, target, headers, body)
            else:
                assert egress.session is not None
                upstream = await egress.session.request(
                    request.method,
                    connector.upstream_url(rest, query),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=egress.timeout,
                    **egress.options,
                )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise upstream_error(exc, connector, source) from None
    elapsed = time.perf_counter() - started
    METRICS.upstream_seconds[connector.name].observe(elapsed)
    facts.upstream_seconds = elapsed
    return upstream


async def _relay(
    request: web.BaseRequest, facts: RequestFacts, upstream: Answer, connector: Connector
) -> web.StreamResponse:
    if upstream.status == 101:
        raise UpstreamError("the upstream tried to switch protocols", connector=connector.name)
    headers = filter_headers(upstream.headers, RESPONSE_DROPPED)
    headers[REQUEST_ID] = facts.request_id
    content = upstream.content
    response: web.StreamResponse
    if content.is_eof() and request.method != hdrs.METH_HEAD:
        # The whole body came with the headers (the usual case for small answers): one
        # response, written with one send, and no stream or timers to set up.
        response = web.Response(
            status=upstream.status,
            reason=upstream.reason,
            headers=headers,
            body=content.read_nowait(),
        )
        if hdrs.UPGRADE in request.headers:
            response.force_close()
        return response
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if hdrs.UPGRADE in request.headers:
        response.force_close()
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    try:
        await _copy_body(upstream, response, connector.upstream.read_deadline())
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        if isinstance(exc, ConnectionResetError):
            return response  # the client went away; nothing left to tell it
        logger.warning(
            "connector %s: upstream_reset_mid_body (%s); aborting the client connection",
            connector.name,
            type(exc).__name__,
        )
        abort_client(request, facts)
        return response
    await response.write_eof()
    return response


async def _copy_body(upstream: Answer, response: web.StreamResponse, idle: ReadDeadline) -> None:
    """Copy the upstream body, failing with ``TimeoutError`` if the upstream stalls for
    the read timeout (``idle``, armed for each read only: time spent writing to a slow
    client does not count against the upstream).

    aiohttp's own ``sock_read`` timer is not used (docs/design.md, "Upstream read timeouts"),
    nor an event-loop timer per chunk: the runtime's deadline watchdog costs a float store.
    """
    with idle:
        while True:
            idle.sent()
            chunk = await upstream.content.readany()
            idle.disarm()
            if not chunk:
                return
            await response.write(chunk)


def abort_client(request: web.BaseRequest, facts: RequestFacts) -> None:
    """Close the client connection at once: no terminating chunk, no further requests.

    aiohttp then fails to write the end of the response and just logs the access line.
    """
    facts.aborted = True
    transport = request.transport
    if transport is not None:
        transport.abort()
