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
from dataclasses import dataclass

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
from proxy.consent.pages import page
from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import TokenSender
from proxy.tokens.model import Authorized, Clock
from proxy.tokens.oauth2 import OAuth2Grant

Say = Callable[[str], None]


@dataclass(frozen=True)
class _Answer:
    query: Mapping[str, str] | None
    """The callback's query; None: stdin reached its end."""
    reply: asyncio.Future[str] | None = None
    """Where the listener waits for the page's message (None for a paste)."""


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
    answers: asyncio.Queue[_Answer] = asyncio.Queue()
    async with _listener(pending.redirect_uri, answers, say) as listening:
        where = f"the provider to redirect to {listening}, or " if listening else ""
        say(
            f"Waiting for {where}the address your browser was redirected to, pasted here "
            f"(it expires in {STATE_LIFETIME / 60:.0f} minutes)..."
        )
        _read_pastes(answers)
        try:
            async with asyncio.timeout(STATE_LIFETIME):
                code = await _first_answer(answers, pending, grant, say, listening is not None)
        except TimeoutError:
            raise TokenEndpointError("the authorization expired before it was completed") from None
    say("Redeeming the authorization code...")
    return await redeem(grant, send, clock, code=code, pending=pending)


async def _first_answer(
    answers: asyncio.Queue[_Answer],
    pending: Pending,
    grant: OAuth2Grant,
    say: Say,
    listening: bool,
) -> str:
    while True:
        answer = await answers.get()
        if answer.query is None:
            if listening:
                continue  # stdin is closed: only the listener can answer now
            raise TokenEndpointError(
                "stdin is closed and the redirect_uri is not a loopback address to listen "
                "on: nothing can bring the provider's answer"
            )
        try:
            code = code_from_callback(answer.query, pending, grant)
        except ConsentError as exc:
            _reply(answer, exc.message)
            if exc.refused:
                raise TokenEndpointError(exc.message) from None
            if not answer.query.keys() & {"state", "code", "error"}:
                say("  that is not the address the provider redirected to; try again")
            else:
                say(f"  {exc.message}; still waiting")
            continue
        _reply(answer, "Authorization received.")
        return code


def _reply(answer: _Answer, message: str) -> None:
    if answer.reply is not None and not answer.reply.done():
        answer.reply.set_result(message)


@asynccontextmanager
async def _listener(
    redirect_uri: str, answers: asyncio.Queue[_Answer], say: Say
) -> AsyncIterator[str | None]:
    """Serve the callback path on a loopback ``http://`` redirect URI; yields its address,
    or None when there is none to serve (then only pasting answers). Not logged: the
    callback's address holds the code."""
    url = URL(redirect_uri)
    if url.scheme != "http" or not is_loopback_host(url.host or "") or url.port is None:
        yield None
        return
    done = False

    async def callback(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != url.path:
            return web.Response(status=404, text="not found")
        message = "This authorization is over already."
        if not done:
            answer = _Answer(dict(request.query), asyncio.get_running_loop().create_future())
            await answers.put(answer)
            assert answer.reply is not None
            message = await answer.reply
        return page("Authorization", [message, _CLOSE], status=200, ok=True)

    runner = web.ServerRunner(
        web.Server(callback, access_log=None), handle_signals=False, shutdown_timeout=1
    )
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
        done = True
        while not answers.empty():  # a reload or a second tab: answered, not left hanging
            _reply(answers.get_nowait(), "This authorization is over already.")
        await runner.cleanup()


_CLOSE = "You can close this window and return to the terminal."


def _read_pastes(answers: asyncio.Queue[_Answer]) -> None:
    """Feed each line typed or pasted on stdin to ``answers``, then its end (a daemon
    thread: a blocked read must not keep the process alive once the authorization is
    done)."""
    loop = asyncio.get_running_loop()

    def put(answer: _Answer) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(answers.put_nowait, answer)

    def read() -> None:
        for line in sys.stdin:
            text = line.strip()
            try:
                put(_Answer(dict(URL(text if "?" in text else "?" + text).query)))
            except ValueError:
                put(_Answer({}))
        put(_Answer(None))

    threading.Thread(target=read, name="paste", daemon=True).start()
