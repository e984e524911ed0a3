"""Credentials fixed at load: a static token, HTTP Basic, pass-through, or a refusal."""

from __future__ import annotations

import base64
from typing import Any

from proxy.auth.base import Authenticator, Credential, credential_for
from proxy.config.auth import BasicAuthConfig, StaticAuthConfig
from proxy.errors import ForbiddenError


class FixedAuthenticator(Authenticator):
    """Hands out one credential computed at start-up; ``None`` means pass-through.

    Nothing can renew a fixed credential, so an upstream 401 is always passed through.
    """

    def __init__(self, credential: Credential | None) -> None:
        self._credential = credential

    async def credential(self) -> Credential | None:
        return self._credential

    def describe(self) -> dict[str, Any]:
        return {"state": "static" if self._credential else "pass-through"}


def static_authenticator(config: StaticAuthConfig) -> FixedAuthenticator:
    return FixedAuthenticator(credential_for(config.token.get_secret_value(), config))


def basic_authenticator(config: BasicAuthConfig) -> FixedAuthenticator:
    # RFC 7617 §2.1: user-pass as UTF-8, then base64.
    pair = f"{config.username}:{config.password.get_secret_value()}".encode()
    return FixedAuthenticator(credential_for(base64.b64encode(pair).decode("ascii"), config))


class NoCredentials(Authenticator):
    """The credential of a connector that has none of its own, only ``per_client`` ones: a
    client without an entry is refused (403), never forwarded without a credential."""

    def __init__(self, connector: str) -> None:
        self._connector = connector

    async def credential(self) -> Credential | None:
        raise ForbiddenError(
            f"connector {self._connector} has no credentials for this client "
            "(no per_client entry names it)"
        )

    def describe(self) -> dict[str, Any]:
        return {"state": "per_client_only"}
