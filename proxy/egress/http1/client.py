"""The forwarding hot path's HTTP/1.1 client: one per connector upstream, over a pool.

It sends what aiohttp's client would send for the same call (``skip_auto_headers``, no
cookies, no decompression), with less work on the way:

- the request line and headers are one string serialized by aiohttp's own serializer,
  which refuses control characters (header injection) as it does for aiohttp's client;
- ``Host`` is the upstream's ``host[:port]``; a held body gets its ``Content-Length``; a
  streamed body keeps the client's ``Content-Length``, else goes chunked; a body-less
  ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` says ``Content-Length: 0``;
- the head and a held body leave in one write; a streamed body is written by a task beside
  the wait for the answer (an upstream may answer before reading it all), with
  backpressure, and each chunk pushes the read deadline back (:func:`progress`);
- the answer is an :class:`UpstreamAnswer`: status, reason, headers and a body stream, as
  the forwarder reads aiohttp's ``ClientResponse``. Closing it gives the connection back to
  the pool when the exchange completed cleanly, and closes it otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import hdrs
from aiohttp.http import RawResponseMessage
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.egress.deadlines import progress
from proxy.egress.http1.connection import UpstreamConnection
from proxy.egress.http1.pool import UpstreamPool

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_ONE_WRITE_MAX = 64 * 1024
"""A held body up to this size is copied behind the head for a single send."""


class UpstreamAnswer:
    """An upstream's answer; :meth:`close` it once done (the forwarder always does)."""

    __slots__ = ("_connection", "_pool", "_writer", "content", "headers", "reason", "status")

    def __init__(
        self,
        message: RawResponseMessage,
        content: StreamReader,
        connection: UpstreamConnection,
        pool: UpstreamPool,
        writer: asyncio.Task[None] | None,
    ) -> None:
        self.status = message.code
        self.reason = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = content
        self._connection: UpstreamConnection | None = connection
        self._pool = pool
        self._writer = writer

    @property
    def content_length(self) -> int | None:
        value = self.headers.get(hdrs.CONTENT_LENGTH)
        return int(value) if value is not None else None  # the parser checked it is digits

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()  # the request is then incomplete: the connection is not reused
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class Http1Client:
    def __init__(self, pool: UpstreamPool, host: str) -> None:
        """``host``: the ``Host`` header, ``host[:port]`` of the upstream URL."""
        self._pool = pool
        self._host = host

    @property
    def pool(self) -> UpstreamPool:
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamAnswer:
        """Send ``method target`` (origin form, raw) with ``headers`` (changed in place)."""
        headers[hdrs.HOST] = self._host
        chunked = False
        if body is None:
            if method not in _NO_BODY_METHODS and hdrs.CONTENT_LENGTH not in headers:
                headers[hdrs.CONTENT_LENGTH] = "0"
        elif isinstance(body, bytes):
            headers[hdrs.CONTENT_LENGTH] = str(len(body))
        elif hdrs.CONTENT_LENGTH not in headers:
            headers[hdrs.TRANSFER_ENCODING] = "chunked"
            chunked = True
        head: bytes = _serialize_headers(f"{method} {target} HTTP/1.1", headers)
        pool = self._pool
        # (A pooled connection costs no coroutine: most requests find one.)
        connection = pool.take_idle() or await pool.acquire()
        writer: asyncio.Task[None] | None = None
        try:
            answer = connection.expect(head_only=method == hdrs.METH_HEAD)
            transport = connection.transport
            assert transport is not None  # acquire() gives open connections only
            if body is not None and not isinstance(body, bytes):  # (no ABC check: slow)
                transport.write(head)
                progress()
                writer = asyncio.get_running_loop().create_task(
                    _stream(connection, body, chunked=chunked)
                )
            else:
                if body and len(body) > _ONE_WRITE_MAX:
                    transport.writelines((head, body))
                else:
                    transport.write(head + body if body else head)
                connection.request_sent()
                progress()
            message, content = await answer
        except BaseException:
            if writer is not None:
                writer.cancel()
            pool.release(connection)  # never reusable: no complete answer was read
            raise
        return UpstreamAnswer(message, content, connection, pool, writer)


async def _stream(
    connection: UpstreamConnection, chunks: AsyncIterator[bytes], *, chunked: bool
) -> None:
    """Write a streamed body; any failure aborts the connection, which fails the answer
    (the client's body remembers its own failure: :class:`~proxy.http.body.RequestBody`)."""
    transport = connection.transport
    try:
        async for chunk in chunks:
            if transport is None or transport.is_closing():
                return  # the exchange ended without us (answered early, or broken)
            if chunk:
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if connection.writing_paused:
                    await connection._drain_helper()
        if transport is not None and not transport.is_closing():
            if chunked:
                transport.write(b"0\r\n\r\n")
            connection.request_sent()
    except asyncio.CancelledError:
        raise
    except Exception:
        connection.abort()
