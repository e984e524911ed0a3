"""Keep-alive connections to one upstream over one TLS profile.

Guarantees:
- at most ``limit`` connections are open or opening; a request beyond that waits its turn
  (first come, first served) within its connect timeout, as with aiohttp's pool;
- an idle connection is used again newest first, and closed once idle for ``keepalive``
  seconds (aiohttp's 15 s); one the upstream closed leaves the pool at once;
- a new connection is resolved and opened with Happy Eyeballs (250 ms, as aiohttp);
- a connection that fails to open raises what aiohttp's connector would raise (a connect
  timeout, refusal, DNS failure, certificate or handshake failure), so one table maps both
  clients' failures (:mod:`proxy.egress.failures`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque

import aiohappyeyeballs
import aiohttp
from aiohttp.client_reqrep import ConnectionKey

from proxy.egress.http1.connection import UpstreamConnection

KEEPALIVE = 15.0


class UpstreamPool:
    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        server_hostname: str | None,
        connect_timeout: float | None,
        limit: int = 100,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._host, self._port = host, port
        self._context = context
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._keepalive = keepalive
        self._idle: deque[UpstreamConnection] = deque()
        self._open = 0
        """Connections open or opening, idle ones included."""
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def in_use(self) -> int:
        """Connections carrying a request (or opening for one) now."""
        return self._open - len(self._idle)

    @property
    def closed(self) -> bool:
        return self._closed

    async def acquire(self) -> UpstreamConnection:
        """A connection ready for one request; give it back with :meth:`release`."""
        connection = self.take_idle()
        if connection is not None:
            return connection
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._connect()
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError("timed out connecting") from None

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool if it can carry another request, else closed: gracefully after
        a complete exchange, else at once (unsent bytes must not hold the slot)."""
        complete = connection.complete
        if not connection.finish() or self._closed:
            if complete:
                connection.close()
            else:
                connection.abort()
            return
        connection.idle_since = time.monotonic()  # (not the loop's clock: no lookup per request)
        self._idle.append(connection)
        self._wake()  # a request waiting for a free slot takes this one
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().abort()

    def take_idle(self) -> UpstreamConnection | None:
        """The newest idle connection still open and young enough (older ones are closed),
        without waiting; None when there is none: then :meth:`acquire`."""
        idle = self._idle
        if not idle:
            return None
        oldest_allowed = time.monotonic() - self._keepalive
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if (
                connection.idle_since >= oldest_allowed
                and transport is not None
                and not transport.is_closing()  # closed by the upstream, not yet lost
            ):
                return connection
            connection.abort()  # its on_lost call updates the count
        return None

    async def _connect(self) -> UpstreamConnection:
        woken = False
        while self._open >= self._limit:
            connection = self.take_idle()  # one came back while we waited
            if connection is not None:
                return connection
            turn = asyncio.get_running_loop().create_future()
            if woken:
                self._waiting.appendleft(turn)  # overtaken after our turn came: still first
            else:
                self._waiting.append(turn)
            try:
                await turn
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._wake()  # woken, then cancelled: the next in line gets the slot
                raise
            finally:
                if turn in self._waiting:
                    self._waiting.remove(turn)
            woken = True
        self._open += 1
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            # Resolved here and connected with Happy Eyeballs (RFC 8305), as aiohttp does:
            # an unreachable IPv6 address must not cost the whole connect timeout.
            addresses = await loop.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            sock = await aiohappyeyeballs.start_connection(
                addresses, happy_eyeballs_delay=0.25, interleave=1, loop=loop
            )
            tls = self._context is not None
            # A fully qualified name's trailing dot is no part of the certificate's names.
            name = (self._server_hostname or self._host).rstrip(".") if tls else None
            _, connection = await loop.create_connection(
                lambda: UpstreamConnection(loop), sock=sock, ssl=self._context, server_hostname=name
            )
        except BaseException as exc:
            if sock is not None:
                sock.close()  # (a no-op once a transport took it over)
            self._open -= 1
            self._wake()
            raise self._connect_error(exc) from None
        connection.on_lost = self._lost  # counted from now: closing it frees the slot
        return connection

    def _connect_error(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, OSError) or isinstance(exc, TimeoutError):
            return exc
        tls = self._context is not None
        key = ConnectionKey(self._host, self._port, tls, self._context or True, None, None, None)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return aiohttp.ClientConnectorCertificateError(key, exc)
        if isinstance(exc, ssl.SSLError):
            return aiohttp.ClientConnectorSSLError(key, exc)
        if isinstance(exc, socket.gaierror):
            return aiohttp.ClientConnectorDNSError(key, exc)
        return aiohttp.ClientConnectorError(key, exc)

    def _lost(self, connection: UpstreamConnection) -> None:
        self._open -= 1
        try:
            self._idle.remove(connection)
        except ValueError:
            pass  # it was in use
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        oldest_allowed = time.monotonic() - self._keepalive
        idle = self._idle
        while idle and idle[0].idle_since < oldest_allowed:
            idle.popleft().abort()
        if idle:
            wait = idle[0].idle_since - oldest_allowed
            self._sweeper = asyncio.get_running_loop().call_later(max(wait, 0.1), self._sweep)
