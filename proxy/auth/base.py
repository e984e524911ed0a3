"""What the forwarder asks of a connector's auth: a :class:`Credential` to put on a request.

The forwarder knows nothing of how a credential is obtained; an :class:`Authenticator`
knows nothing of HTTP forwarding. Token-issuing auth types (OAuth2, custom token requests)
are further authenticators behind the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote

from multidict import CIMultiDict

from proxy.config.auth import InjectedAuthConfig


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


class Authenticator(Protocol):
    """Supplies the credential for one connector's upstream requests."""

    reauth_on: frozenset[int]
    """Upstream statuses after which :meth:`renew` is worth asking (empty: never)."""
    replay_limit: int
    """Largest request body to buffer so the request can be replayed after a renewal."""

    async def credential(self) -> Credential | None:
        """The credential to inject now, or ``None`` to forward without one (type ``none``).

        Raises a :class:`~proxy.errors.ProxyError` when no credential can be had.
        """
        ...

    async def renew(self, rejected: Credential) -> Credential | None:
        """The upstream rejected ``rejected``: return a credential to replay with, or None."""
        ...

    def describe(self) -> dict[str, Any]:
        """State for ``/connectors`` and ``/ready``: never a credential."""
        ...

    @property
    def has_valid_token(self) -> bool: ...

    async def refresh(self) -> None:
        """Obtain a new credential now; raises a ProxyError on failure. No-op if fixed."""
        ...

    async def close(self) -> None: ...
