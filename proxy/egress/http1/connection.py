"""One keep-alive HTTP/1.1 connection to an upstream, carrying one request at a time.

An asyncio protocol around aiohttp's own response parser (its C parser, or the pure-Python
one under ``AIOHTTP_NO_EXTENSIONS=1``), so answers are framed by exactly the rules, limits
and errors of aiohttp's client: Content-Length, chunked, or read until the connection
closes; 8190-byte lines and fields, 128 header lines; conflicting or malformed framing
refused (a repeated Content-Length too, which only the C parser catches itself). What it
adds to the parser is bookkeeping:

- an answer's head arrives through a future; interim answers (``100 Continue``, ``103``)
  are skipped, as aiohttp's client skips them;
- the body streams through aiohttp's ``StreamReader``, which pauses reading the socket while
  more than 64 KiB wait (the parser's flow control), so a slow client holds a bounded buffer;
- every way the connection can fail ends the pending head or body with the exception
  aiohttp's client would raise (:mod:`proxy.egress.failures` reads those): closed before an
  answer, reset, an answer the parser refuses, a body cut short; a body is never left
  neither complete nor failed;
- the connection can be used again (:meth:`finish` says so) only after a complete answer to
  a completely sent request, with no ``Connection: close`` (keep-alive for HTTP/1.0), no
  upgrade, and no byte beyond the answer: not in the bytes that ended it, not after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_exceptions import (
    ClientOSError,
    ClientPayloadError,
    ServerDisconnectedError,
)
from aiohttp.helpers import EMPTY_BODY_STATUS_CODES
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.http_parser import HttpParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from proxy.egress.failures import InvalidAnswer

READ_LIMIT = 2**15
"""The body buffer's low-water mark (aiohttp's ``read_bufsize`` is 64 KiB): reading pauses
at twice it. Half aiohttp's: as fast for 64 KiB answers, 4 MB less RSS at 64 connections
(benchmarks/pinned.py)."""

Answer = tuple[RawResponseMessage, StreamReader]


class UpstreamConnection(BaseProtocol):
    """The protocol of one pooled connection; ``lost`` is called once when it closes."""

    __slots__ = ("_answer", "_payload", "_sent", "idle_since", "keep_alive", "on_lost")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        """Called once the connection closes; set by the pool once it counts the connection
        (a connect cancelled after ``connection_made`` is the connect's own failure)."""
        self._answer: asyncio.Future[Answer] | None = None
        self._payload: StreamReader | None = None
        self._sent = False
        self.keep_alive = False
        self.idle_since = 0.0

    def expect(self, *, head_only: bool) -> asyncio.Future[Answer]:
        """Arm the connection for the answer to the request about to be written."""
        self._parser = HttpResponseParser(
            self,
            self._loop,
            READ_LIMIT,
            payload_exception=ClientPayloadError,
            response_with_body=not head_only,
            read_until_eof=True,
            auto_decompress=False,
        )
        self._payload, self._sent, self.keep_alive = None, False, False
        self._answer = answer = self._loop.create_future()
        return answer

    def request_sent(self) -> None:
        """The whole request is on its way; until then the connection cannot be reused."""
        self._sent = True

    @property
    def complete(self) -> bool:
        """The whole request was sent and the whole answer read, without an error."""
        payload = self._payload
        return (
            self._sent and payload is not None and payload.is_eof() and payload.exception() is None
        )

    def finish(self) -> bool:
        """The answer was taken: bytes arriving now are not part of any answer. Returns
        whether the connection may carry another request."""
        reusable = self.keep_alive and self.complete
        transport = self.transport
        if transport is None or transport.is_closing():
            reusable = False
        parser = self._parser
        if reusable and parser is not None and _holds_bytes(parser):
            reusable = False  # the start of something more came with the end of the answer
        self._parser, self._answer, self._payload = None, None, None
        return reusable

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, unsent bytes dropped: the request cannot be completed."""
        if self.transport is not None:
            self.transport.abort()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # The body stream calls this after every read and at its end, paused or not; only
        # a pause (the parser's or the socket's) has anything to resume.
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)

    def data_received(self, data: bytes) -> None:
        if not data:
            if self._parser is not None:  # resume parsing what a pause held back
                self._feed(self._parser, data)
            return
        parser, payload = self._parser, self._payload
        if parser is None or (payload is not None and payload.is_eof()):
            # Nothing was asked, or the answer is over: bytes now are a protocol error (a
            # second answer, a body after HEAD). Never read them as the next answer.
            self.keep_alive = False
            self.abort()
            return
        self._feed(parser, data)

    def _feed(self, parser: HttpParser[Any], data: bytes) -> None:
        try:
            messages, upgraded, _tail = parser.feed_data(data)
        except Exception:
            self._fail(InvalidAnswer("the upstream sent an invalid response"))
            return
        if upgraded:  # what follows is no HTTP (the pure-Python parser's fake upgrade too)
            self.keep_alive = False
        for message, payload in messages:
            code = message.code
            if 100 <= code < 200 and code != 101:
                continue  # interim: the final answer follows on the same connection
            answer = self._answer
            if answer is None or answer.done():
                self.keep_alive = False  # a second answer to one request
                self.close()
                return
            if len(message.headers.getall(hdrs.CONTENT_LENGTH, ())) > 1:
                # llhttp refuses this; aiohttp's pure-Python parser takes one of them.
                self._fail(InvalidAnswer("the upstream sent two Content-Length headers"))
                return
            if code in EMPTY_BODY_STATUS_CODES:
                payload = EMPTY_PAYLOAD
            self._payload = payload
            self.keep_alive = not message.should_close and code != 101 and not upgraded
            answer.set_result((message, payload))

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.keep_alive = False
        parser, self._parser = self._parser, None
        payload = self._payload
        if parser is not None:
            try:
                parser.feed_eof()  # ends a body read until the connection closes
            except Exception:
                pass  # cut short: failed below
        if payload is not None and not payload.is_eof():
            payload.set_exception(ClientPayloadError("Response payload is not completed"))
        answer = self._answer
        if answer is not None and not answer.done():
            if isinstance(exc, OSError):
                answer.set_exception(ClientOSError(*exc.args))
            else:
                answer.set_exception(ServerDisconnectedError())
        if self.on_lost is not None:
            self.on_lost(self)

    def _fail(self, error: Exception) -> None:
        self.keep_alive = False
        self._parser = None
        answer, payload = self._answer, self._payload
        if answer is not None and not answer.done():
            answer.set_exception(error)
        elif payload is not None and not payload.is_eof():
            payload.set_exception(ClientPayloadError("Response payload is not completed"))
        self.close()


def _holds_bytes(parser: HttpParser[Any]) -> bool:
    """Whether the parser holds the start of another message (C: ``feed_eof`` returns it;
    pure Python: it sits in the tail or the lines read so far)."""
    if getattr(parser, "_tail", b"") or getattr(parser, "_lines", None):
        return True
    try:
        return parser.feed_eof() is not None
    except Exception:
        return True
