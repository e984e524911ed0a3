"""In-process fakes on real loopback sockets: a recording upstream and a raw-bytes upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.demo.echo import describe_request, echo
from proxy.demo.idp import DemoIdentityProvider, OAuthError

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


class FakeIdP(DemoIdentityProvider):
    """The demo identity provider, with knobs and counters for tests.

    - ``calls``: every request (path, form, headers), in order; ``max_active``: the most
      requests it was ever answering at once;
    - ``delay``: seconds before each answer; ``script``: answers for the next calls, used
      before falling back to real OAuth2 behaviour;
    - ``overrides``: fields merged into every issued token (``None`` removes a field);
    - ``reuse_detected``: a rotated refresh token was presented again (RFC 9700 §4.14).
    """

    def __init__(self, expires_in: int = 300) -> None:
        super().__init__(expires_in)
        self.calls: list[dict[str, Any]] = []
        self.delay = 0.0
        self.script: list[Responder] = []
        self.overrides: dict[str, Any] = {}
        self.active = self.max_active = 0
        self.reuse_detected = False
        self.url = ""  # set once the server listens

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        is_json = request.content_type == "application/json"
        form = {} if is_json else {k: str(v) for k, v in (await request.post()).items()}
        self.calls.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "form": form,
                "json": await request.json() if is_json else None,
                "headers": dict(request.headers),
            }
        )
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.script:
                return await self.script.pop(0)(request)
            return await super().__call__(request)
        finally:
            self.active -= 1

    def issue(
        self, subject: str, *, with_refresh: bool, scope: str | None = None
    ) -> dict[str, Any]:
        token = super().issue(subject, with_refresh=with_refresh, scope=scope)
        for key, value in self.overrides.items():
            if value is None:
                token.pop(key, None)
            else:
                token[key] = value
        return token

    def refresh(self, presented: str) -> dict[str, Any]:
        try:
            return super().refresh(presented)
        except OAuthError as exc:
            self.reuse_detected |= exc.description == "refresh token reuse detected"
            raise

    @property
    def grants(self) -> list[str]:
        return [call["form"].get("grant_type", "") for call in self.calls]


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Responder:
    """A scripted IdP or upstream answer: JSON for dicts and lists, raw for bytes/str."""

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        if isinstance(body, dict | list):
            return web.json_response(body, status=status, headers=headers)
        text = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=text, headers=headers)

    return respond


class FakeClock:
    """Monotonic and wall time that move only when told; ``sleep`` advances them at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_offset = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds
