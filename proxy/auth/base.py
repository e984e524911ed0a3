"""What the forwarder asks of a connector's auth: to send a request with its credential.

The forwarder is a pipe: it hands :meth:`Authenticator.send` a function that sends the
request with a given :class:`Credential`, and gets back the response to relay. Obtaining,
renewing and replaying are the authenticator's alone (httpx's ``auth_flow`` is the model).
Token-issuing auth types (OAuth2, custom token requests) are authenticators too
(:class:`~proxy.tokens.manager.TokenManager`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote

from multidict import CIMultiDict

from proxy.config.auth import InjectedAuthConfig
from proxy.tokens.model import Phase


@dataclass(frozen=True, slots=True)
class Credential:
    """A ready-to-send credential: a header value, or a query parameter value.

    ``repr`` never shows the value, so a credential in a traceback or log leaks nothing.
    """

    value: str
    header: str | None = None
    query_param: str | None = None

    def __repr__(self) -> str:
        where = self.header or f"?{self.query_param}"
        return f"Credential({where}, {len(self.value)} chars)"

    def apply(self, headers: CIMultiDict[str], query: str | None) -> str | None:
        """Set the credential on ``headers`` or in ``query``; return the query to send.

        A client-sent header or query parameter of the same name is replaced, never kept
        beside ours.
        """
        if self.header is not None:
            headers[self.header] = self.value
            return query
        assert self.query_param is not None
        kept = [part for part in (query or "").split("&") if part and not self._names_us(part)]
        kept.append(f"{quote(self.query_param, safe='')}={quote(self.value, safe='')}")
        return "&".join(kept)

    def _names_us(self, part: str) -> bool:
        name = part.split("=", 1)[0]
        return unquote(name.replace("+", " ")) == self.query_param


def credential_for(token: str, config: InjectedAuthConfig) -> Credential:
    """Shape ``token`` the way the connector's ``header``/``token_prefix``/``query_param`` say."""
    if config.query_param:
        return Credential(value=token, query_param=config.query_param)
    value = f"{config.token_prefix} {token}" if config.token_prefix else token
    return Credential(value=value, header=config.header)


class Response(Protocol):
    """What the auth flow needs of an upstream response (aiohttp's ClientResponse has it)."""

    @property
    def status(self) -> int: ...

    def close(self) -> None: ...


ResponseT = TypeVar("ResponseT", bound=Response)
Send = Callable[[Credential | None], Awaitable[ResponseT]]


class Authenticator:
    """Supplies one connector's credential, and owns re-authentication (:meth:`send`).

    Subclasses say how a credential is had (:meth:`credential`) and renewed (:meth:`renew`);
    the flow that sends, judges the status, renews and replays is here, once, for all.
    """

    reauth_on: frozenset[int] = frozenset()
    """Upstream statuses after which :meth:`renew` is worth asking (empty: never)."""
    replay_limit: int = 0
    """Largest request body to buffer so the request can be replayed after a renewal."""

    async def credential(self) -> Credential | None:
        """The credential to inject now, or ``None`` to forward without one (type ``none``).

        Raises a :class:`~proxy.errors.ProxyError` when no credential can be had.
        """
        raise NotImplementedError

    async def renew(self, rejected: Credential) -> Credential | None:
        """The upstream rejected ``rejected``: return a credential to replay with, or None."""
        return None

    def phase(self) -> Phase | None:
        """The held token's phase; ``None`` for credentials fixed at load (always ready)."""
        return None

    def describe(self) -> dict[str, Any]:
        """State for ``/connectors`` and ``/ready``: never a credential."""
        raise NotImplementedError

    async def refresh(self, *, force: bool = True) -> None:
        """Obtain a new credential now; raises a ProxyError on failure. No-op if fixed.
        ``force=False`` accepts a valid one another process already obtained."""
        return None

    async def close(self) -> None:
        return None

    async def send(self, send: Send[ResponseT], *, replay: Callable[[], bool]) -> ResponseT:
        """Send with the current credential; on a ``reauth_on`` status, renew (compare and
        invalidate) and, if ``replay()`` allows one more send (the body can be sent again
        and the request's tries are not used up), send once more with the new credential.

        Every response but the one returned is closed, on every path: a client that goes
        away while the renewal runs must not leave a half-read answer holding a pooled
        connection (the renewal may take as long as the token endpoint does).
        """
        credential = await self.credential()
        response = await send(credential)
        if credential is None or response.status not in self.reauth_on:
            return response
        try:
            renewed = await self.renew(credential)
        except BaseException:
            response.close()
            raise
        if renewed is None or not replay():
            return response
        response.close()
        return await send(renewed)
