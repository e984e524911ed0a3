"""The client's request body as the upstream request consumes it, under the server's limits.

- ``server.body_timeout``: the longest pause between two reads. A client that stops sending
  gets 408 ``request_timeout`` and its connection is closed (nginx's client_body_timeout).
- ``max_body`` (the connector's, else the server's): a declared ``Content-Length`` over it is
  refused before anything is sent upstream; a chunked body is counted as it streams.

A failure while aiohttp is sending the body upstream reaches us as some client error of its
own; :attr:`RequestBody.failure` remembers what really happened, so the forwarder answers
408 or 413 instead of 502, and the upstream request is abandoned with its connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import hdrs, web

from proxy.egress.deadlines import progress
from proxy.errors import BodyTooLargeError, ProxyError, RequestTimeoutError

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestBody:
    def __init__(self, request: web.BaseRequest, *, idle_timeout: float, limit: int) -> None:
        self._request = request
        self._idle_timeout = idle_timeout
        self._limit = limit
        self._received = 0
        self._continued = False
        self.failure: ProxyError | None = None
        if request.content_length is not None and request.content_length > limit:
            error = BodyTooLargeError(f"the request body is larger than {limit} bytes")
            # A client waiting for 100 Continue sends nothing more: close, don't linger.
            error.linger = request.headers.get(hdrs.EXPECT, "").lower() != "100-continue"
            raise error

    async def read_all(self) -> bytes:
        """The whole body (callers bound it first: a replayable body is small)."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        await self._continue()
        while chunk := await self._read():
            yield chunk

    async def _continue(self) -> None:
        """Answer ``Expect: 100-continue`` once, now that the request passed every check
        and its body is wanted (aiohttp's low-level server leaves this to us)."""
        request = self._request
        if self._continued:
            return
        self._continued = True
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(_CONTINUE)

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_timeout):
                chunk = await self._request.content.readany()
        except TimeoutError:
            self.failure = RequestTimeoutError(
                f"the client sent no body data for {self._idle_timeout:g} s"
            )
            raise self.failure from None
        progress()  # body data goes out: the upstream's answer deadline moves on
        self._received += len(chunk)
        if self._received > self._limit:
            self.failure = BodyTooLargeError(f"the request body is larger than {self._limit} bytes")
            raise self.failure
        return chunk
