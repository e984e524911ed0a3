"""Credentials fixed at load: a static token, HTTP Basic, or none at all."""

from __future__ import annotations

import base64
from typing import Any

from proxy.auth.base import Authenticator, Credential, credential_for
from proxy.config.auth import BasicAuthConfig, StaticAuthConfig


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
