"""In-process fakes on real loopback sockets: a recording upstream and a raw-bytes upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.demo.echo import describe_request, echo

Responder = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class RecordingUpstream:
    """The demo echo upstream, recording every request it receives.

    ``respond`` replaces the echo answer for one test (a 302, a slow answer, a stream...).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.respond: Responder | None = None
        self.url = ""  # set once the server listens

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append(await describe_request(request))
        if self.respond is not None:
            return await self.respond(request)
        return await echo(request)

    @property
    def last(self) -> dict[str, Any]:
        assert self.requests, "the upstream received no request"
        return self.requests[-1]

    def header_values(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.requests[index]["headers"] if k.lower() == name.lower()]


class RawUpstream:
    """An upstream that answers each connection with fixed bytes and records what it read.

    For framing abuse the aiohttp server would refuse to produce, and for checking the exact
    request line on the wire.
    """

    def __init__(
        self, response: bytes | list[bytes], *, then_close: bool = True, delay: float = 0
    ) -> None:
        # Parts of a list are written 0.1 s apart: the proxy relays the first before the next.
        self.parts = [response] if isinstance(response, bytes) else response
        self.then_close = then_close
        self.delay = delay
        self.received: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.received.append(head)
            await asyncio.sleep(self.delay)
            for index, part in enumerate(self.parts):
                if index:
                    await asyncio.sleep(0.1)
                writer.write(part)
                await writer.drain()
            if not self.then_close:
                await asyncio.sleep(5)  # hold the connection open; the test decides
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
