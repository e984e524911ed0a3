"""What the token manager needs from an auth type that obtains tokens: the :class:`Grant`."""

from __future__ import annotations

from typing import Protocol

from proxy.tokens.endpoint import TokenRequest, TokenResponse
from proxy.tokens.model import IssuedToken


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

    @property
    def keeps_refresh_tokens(self) -> bool: ...

    def seed_refresh_token(self) -> str | None: ...

    def primary_request(self) -> TokenRequest: ...

    def refresh_request(self, refresh_token: str) -> TokenRequest: ...

    def read(self, response: TokenResponse, *, refreshing: bool, now_wall: float) -> IssuedToken:
        """Raises :class:`~proxy.errors.TokenEndpointError` for any unusable answer."""
        ...
