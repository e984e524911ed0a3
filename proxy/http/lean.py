"""The client side of a connection: the usual request answered lean, the rest by aiohttp.

Most requests a proxy sees are small and arrive whole in one read: ``GET /crm/...`` and its
headers, or a ``POST`` with a JSON body and its ``Content-Length``. For those, aiohttp's
connection handler (a waiter and a task per request, keep-alive timers reset twice, a stream
writer and two coroutines to write the answer) costs more than the gateway. A
:class:`LeanConnection` answers them itself, and gives the connection to aiohttp's handler,
for good, the moment anything else arrives. Guarantees:

- one parser, aiohttp's own (C, or pure Python under ``AIOHTTP_NO_EXTENSIONS``), with the
  limits of ``server``; a request is taken here only when a read of at most 64 KiB holds
  exactly one whole message and ends where it ends: no body, or a ``Content-Length`` body
  (not chunked, no ``Expect``), no ``Upgrade``, not ``CONNECT``;
- anything else (a body split over reads, a chunked one, a request split over reads,
  several in one read, bytes the parser refuses) is handed with every byte not yet answered
  to aiohttp's handler, which parses it from the start and answers exactly as if it had had
  the connection from the start;
- the request is a real ``web.BaseRequest`` over this connection (its body, all there, in
  aiohttp's own stream), so the gateway, its checks and limits and its answers are the same
  code either way; an answer is written as aiohttp would write it (:mod:`proxy.http.wire`,
  or aiohttp's own writer for streamed ones), and the next request waits until the client
  has taken it in;
- one request at a time: bytes that arrive while one is answered wait (past 64 KiB, reading
  pauses) and are taken next; an answer that closes, or ``Connection: close``, ends it;
- like aiohttp's (``handler_cancellation``): a client that goes away cancels its request; an
  idle connection closes after ``keepalive_timeout``, the first request's wait included, and
  a hand-over passes the deadline on; a shutdown lets the request under way finish within
  the timeout, then cancels it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EmptyStreamReader, StreamReader
from aiohttp.web_protocol import RequestHandler

from proxy.http.wire import encode
from proxy.logs import AccessLogger

logger = logging.getLogger(__name__)

_BUFFER = 2**16
"""aiohttp's read buffer (``read_bufsize``): the parser's, the bytes held while a request is
answered before reading pauses, and the largest read taken here (its body then stays under
the body stream's high-water mark, twice this, so reading it never pauses)."""


@dataclass(slots=True)
class LeanListener:
    """What every connection of one listener shares; ``__call__`` is the protocol factory."""

    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    hand_over: Callable[[], RequestHandler]
    """Makes the aiohttp connection handler that takes a connection over."""
    internal_error: Callable[[], web.Response]
    """The answer when ``handler`` raises (it answers its own errors: a bug), closing."""
    access: AccessLogger | None
    keepalive_timeout: float
    max_line_size: int
    max_field_size: int
    max_headers: int
    connections: set[LeanConnection] = field(default_factory=set)

    def __call__(self) -> LeanConnection:
        return LeanConnection(self)

    async def shutdown(self, grace: float | None) -> None:
        """Let every request under way finish within ``grace`` seconds; close every
        connection."""
        await asyncio.gather(*(c.shutdown(grace) for c in list(self.connections)))


class LeanConnection(BaseProtocol):
    """One client connection until it is handed to aiohttp (module docstring)."""

    ssl_context = None  # web.BaseRequest reads it: plain TCP here (TLS tunnels are aiohttp's)
    tunnel_host = tunnel_client = None  # the gateway asks: never a tunnel (those are aiohttp's)

    def __init__(self, listener: LeanListener) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(loop)
        self._listener = listener
        self._access = listener.access if listener.access and listener.access.enabled else None
        self.peername: Any = None
        self.sockname: Any = None
        self._answering: asyncio.Task[None] | None = None
        self._held = b""
        self._closing = False
        self._served = 0
        self._idle_until = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        listener = self._listener
        self._parser = HttpRequestParser(
            self,
            self._loop,
            _BUFFER,
            max_line_size=listener.max_line_size,
            max_field_size=listener.max_field_size,
            max_headers=listener.max_headers,
            auto_decompress=False,
        )
        listener.connections.add(self)
        self._idle()

    def data_received(self, data: bytes) -> None:
        if self._closing or not data:  # (b"": a body stream's resume_reading, nothing new)
            return
        if self._answering is not None:
            self._held += data  # the next request(s): taken once this one is answered
            if len(self._held) > _BUFFER and not self._buffer_paused:
                # aiohttp's own buffer pause: a body stream's resume_reading respects it
                self._pause_reading_for_buffer()
            return
        self._take(data)

    def eof_received(self) -> None:
        """The client closed its side: the transport closes (as aiohttp's handler does)."""

    def _take(self, data: bytes) -> None:
        request = self._whole_request(data)
        if request is None:
            self._hand_over(data)
            return
        self._served += 1
        self._answering = self._loop.create_task(self._answer(*request))

    def _whole_request(self, data: bytes) -> tuple[RawRequestMessage, StreamReader] | None:
        """The one request that ``data`` holds entirely, ending where ``data`` ends, if that
        is what it holds: without a body, or with a ``Content-Length`` body."""
        if len(data) > _BUFFER:
            return None  # more than a body buffer takes without pausing: aiohttp's
        assert self._parser is not None
        try:
            messages, upgraded, _ = self._parser.feed_data(data)
        except HttpProcessingError:
            return None  # aiohttp's handler parses it again and answers 400 its way
        if upgraded or len(messages) != 1:
            return None
        message, payload = messages[0]
        if message.upgrade or message.method == hdrs.METH_CONNECT:
            return None
        if type(payload) is EmptyStreamReader:
            # Nothing may follow the head: a request split over reads ends elsewhere.
            return (message, payload) if data.endswith(b"\r\n\r\n") else None
        headers = message.headers
        length = headers.get(hdrs.CONTENT_LENGTH)
        if length is None or hdrs.EXPECT in headers or not payload.is_eof():
            return None  # chunked, waiting for 100 Continue, or not all here: aiohttp's
        # The body ends where the read does: no byte of another request behind it.
        if data.find(b"\r\n\r\n") + 4 + int(length) != len(data):
            return None
        return message, payload

    def _hand_over(self, data: bytes) -> None:
        """Give the connection and ``data`` to aiohttp's handler, for good. Reading is not
        paused here (held bytes are taken only after reading resumed): from now on the
        handler's own flow control decides."""
        transport = self.transport
        assert transport is not None
        self._forget()
        self.transport = None
        self._closing = True
        handler = self._listener.hand_over()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:  # the transport's write buffer is full: it will tell the handler
            handler.pause_writing()
        # Private fields of aiohttp's handler, as its own connection_made sets them:
        handler._request_count = self._served  # its log tells a first request from others
        if handler._keepalive_handle is not None:  # the idle time spent here counts
            handler._keepalive_handle.cancel()
            handler._next_keepalive_close_time = self._idle_until
            handler._keepalive_handle = self._loop.call_at(
                self._idle_until, handler._process_keepalive
            )
        handler.data_received(data)

    async def _answer(self, message: RawRequestMessage, payload: StreamReader) -> None:
        loop = self._loop
        request = web.BaseRequest(
            message,
            payload,
            cast(RequestHandler, self),  # it reads ssl_context, peername, sockname, transport
            StreamWriter(self, loop),
            # This coroutine's task: _take set it before the task first ran (tasks start on
            # the loop's next turn; nothing here installs an eager task factory).
            cast("asyncio.Task[None]", self._answering),
            loop,
        )
        keep = False
        try:
            try:
                response = await self._listener.handler(request)
            except ConnectionError:
                raise
            except Exception as exc:  # the gateway answers its own errors: this is a bug
                logger.error("internal error answering a request: %s", type(exc).__name__)
                response = self._listener.internal_error()  # as aiohttp's handler: a 500
            keep = await self._send(request, response)
        except (asyncio.CancelledError, ConnectionError):
            pass  # the client went away, or a shutdown gave up on it: nothing to send
        except Exception as exc:  # an answer aiohttp's serializer refuses: close, as it does
            logger.error("internal error writing an answer: %s", type(exc).__name__)
        finally:
            self._answering = None
        if not keep or self._closing or self.transport is None:
            self._closing = True
            if self.transport is not None:
                self.transport.close()
            return
        self._idle()
        held, self._held = self._held, b""
        if self._buffer_paused:
            self._resume_reading_for_buffer()
        if held:
            self._take(held)

    async def _send(self, request: web.BaseRequest, response: web.StreamResponse) -> bool:
        """Write ``response`` (if the gateway has not streamed it already) and wait until the
        client takes it in (a client that stops reading is sent nothing more); log it; whether
        the connection stays open. A client gone mid-answer is logged, then raised."""
        sent = 0
        try:
            encoded = encode(request, response)
            if encoded is not None:
                data, keep = encoded
                transport = self.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client went away")
                transport.write(data)
                sent = len(data)
                if self._paused:  # past the write buffer's high-water mark, as aiohttp's drain
                    await self._drain_helper()
            else:
                await response.prepare(request)
                await response.write_eof()
                keep, sent = bool(response.keep_alive), response.body_length
        finally:
            if self._access is not None:
                # The gateway stamped the request's start; the logger measures from there.
                self._access.record(request, response.status, sent, 0.0)
        return keep

    def _idle(self) -> None:
        """(Re)start the idle countdown, reusing the timer (a request costs no timer)."""
        timeout = self._listener.keepalive_timeout
        if timeout <= 0:
            return
        self._idle_until = self._loop.time() + timeout
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._idle_until, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._answering is not None or self.transport is None:
            return  # the end of the answer starts the countdown again
        if self._loop.time() < self._idle_until:
            self._idle_timer = self._loop.call_at(self._idle_until, self._idle_check)
            return
        self.force_close()

    def _forget(self) -> None:
        self._listener.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._forget()
        self._closing = True
        if self._answering is not None:
            self._answering.cancel()  # the client went away: so does its upstream request

    def close(self) -> None:
        """Take no further request; close now if none is under way."""
        self._closing = True
        if self._answering is None and self.transport is not None:
            self.transport.close()

    def force_close(self) -> None:
        """Close now (the gateway's refusals that must not linger)."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    async def shutdown(self, grace: float | None) -> None:
        """Let the request under way finish within ``grace`` seconds, then cancel it; close."""
        self.close()
        task = self._answering
        if task is not None:
            await asyncio.wait({task}, timeout=grace)
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1)
        self.force_close()
