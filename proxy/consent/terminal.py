"""The authorization-code flow from a terminal (``tokenproxy authorize NAME``).

It prints the authorization URL, then waits for the answer two ways at once: the provider's
redirect to a loopback ``redirect_uri`` (a listener on that address for the callback path
alone, RFC 8252 §7.3), or the redirected address pasted into the terminal (for a browser on
another machine, or a ``redirect_uri`` that is not loopback). A callback that does not
answer this authorization (a stale tab, a mistyped paste) is refused and waiting goes on;
the provider's refusal ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from aiohttp import web
from yarl import URL

from proxy.config.base import is_loopback_host
from proxy.consent.flow import (
    STATE_LIFETIME,
    ConsentError,
    Pending,
    authorization_url,
    code_from_callback,
    redeem,
)
from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import TokenSender
from proxy.tokens.model import Authorized, Clock
from proxy.tokens.oauth2 import OAuth2Grant

Say = Callable[[str], None]

_DONE_PAGE = (
    "<!doctype html><meta charset=utf-8><title>tokenproxy</title>"
    "<p>{message}</p><p>You can close this window and return to the terminal.</p>"
)


async def authorize_in_terminal(
    grant: OAuth2Grant, send: TokenSender, clock: Clock, *, say: Say
) -> Authorized:
    """Run the flow once; raises TokenEndpointError (what the CLI reports)."""
    assert grant.links is not None, "authorization_code grants always have links"
    await grant.prepare(send)
    redirect_uri = grant.links.redirect_uri
    pending = Pending.begin(grant.connector, redirect_uri, grant.config.pkce, clock.wall())
    say("Open this address in a browser and approve the access:")
    say(f"  {authorization_url(grant, pending, {})}")
    answers: asyncio.Queue[tuple[Mapping[str, str], asyncio.Future[str] | None]] = asyncio.Queue()
    async with _listener(pending.redirect_uri, answers, say) as listening:
        where = f"the provider to redirect to {listening}, or " if listening else ""
        say(
            f"Waiting for {where}the address your browser was redirected to, pasted here "
            f"(it expires in {STATE_LIFETIME / 60:.0f} minutes)..."
        )
        _read_pastes(answers)
        try:
            async with asyncio.timeout(STATE_LIFETIME):
                code = await _first_answer(answers, pending, grant.issuer, say)
        except TimeoutError:
            raise TokenEndpointError("the authorization expired before it was completed") from None
    say("Redeeming the authorization code...")
    return await redeem(grant, send, clock, code=code, pending=pending)


async def _first_answer(
    answers: asyncio.Queue[tuple[Mapping[str, str], asyncio.Future[str] | None]],
    pending: Pending,
    issuer: str | None,
    say: Say,
) -> str:
    while True:
        query, reply = await answers.get()
        try:
            code = code_from_callback(query, pending, issuer)
        except ConsentError as exc:
            if reply is not None:
                reply.set_result(exc.message)
            if exc.refused:
                raise TokenEndpointError(exc.message) from None
            if not query.keys() & {"state", "code", "error"}:
                say("  that is not the address the provider redirected to; try again")
            else:
                say(f"  {exc.message}; still waiting")
            continue
        if reply is not None:
            reply.set_result("Authorization received.")
        return code


@asynccontextmanager
async def _listener(
    redirect_uri: str,
    answers: asyncio.Queue[tuple[Mapping[str, str], asyncio.Future[str] | None]],
    say: Say,
) -> AsyncIterator[str | None]:
    """Serve the callback path on a loopback ``http://`` redirect URI; yields its address,
    or None when there is none to serve (then only pasting answers)."""
    url = URL(redirect_uri)
    if url.scheme != "http" or not is_loopback_host(url.host or "") or url.port is None:
        yield None
        return

    async def callback(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != url.path:
            return web.Response(status=404, text="not found")
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await answers.put(({k: v for k, v in request.query.items()}, reply))
        message = await reply
        page = _DONE_PAGE.format(message=message)
        return web.Response(text=page, content_type="text/html", headers=_NO_STORE)

    server = web.Server(callback)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, url.host, url.port).start()
        except OSError as exc:
            say(
                f"(cannot listen on {url.host}:{url.port}: {exc.strerror}; if tokenproxy "
                "serves that address, its callback page shows the address to paste here)"
            )
            yield None
            return
        yield str(url.with_query(None))
    finally:
        await runner.cleanup()


_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _read_pastes(
    answers: asyncio.Queue[tuple[Mapping[str, str], asyncio.Future[str] | None]],
) -> None:
    """Feed each line typed or pasted on stdin to ``answers`` (a daemon thread: a blocked
    read must not keep the process alive once the authorization is done)."""
    loop = asyncio.get_running_loop()

    def read() -> None:
        for line in sys.stdin:
            text = line.strip()
            try:
                query = dict(URL(text if "?" in text else "?" + text).query)
            except ValueError:
                query = {}
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(answers.put_nowait, (query, None))

    threading.Thread(target=read, name="paste", daemon=True).start()
