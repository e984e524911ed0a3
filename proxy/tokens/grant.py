"""What the token manager needs from an auth type that obtains tokens: the :class:`Grant`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import TokenRequest, TokenResponse, TokenSender
from proxy.tokens.model import IssuedToken


@dataclass(frozen=True)
class RequestContext:
    """What a grant may put into the next request: the tokens held now (either may be None)
    and the wall-clock time (for signed client assertions)."""

    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    now_wall: float = 0.0


class Grant(Protocol):
    """Builds token requests and reads answers, without I/O (httpx's auth-flow split).

    The manager sends the requests, retries, caches and renews; every grant gets the same
    single-flight, back-off and re-auth behaviour that way.
    """

    connector: str

    @property
    def has_primary_grant(self) -> bool:
        """False when only a refresh token can get a token."""
        ...

    def seed_refresh_token(self) -> str | None: ...

    async def prepare(self, send: TokenSender) -> None:
        """Whatever I/O must come before the first request (provider discovery); cached."""
        ...

    def primary_request(self, current: RequestContext) -> TokenRequest: ...

    def refresh_request(self, current: RequestContext) -> TokenRequest | None:
        """The renewal request, or None when renewal needs the primary request."""
        ...

    def refresh_rejected(self, error: TokenEndpointError) -> bool:
        """True when ``error`` of a renewal means: drop the refresh token, start over."""
        ...

    def refresh_token_in(self, response: TokenResponse, *, refreshing: bool) -> str | None:
        """A valid refresh token in a 2xx ``response``, whatever else it holds; else None.

        Never raises: the manager keeps what this returns before :meth:`read` judges the
        rest, because a provider that rotated the refresh token has already revoked the old.
        """
        ...

    def read(self, response: TokenResponse, *, refreshing: bool, now_wall: float) -> IssuedToken:
        """Raises :class:`~proxy.errors.TokenEndpointError` for any unusable answer."""
        ...
