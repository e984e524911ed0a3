"""Credentials fixed at load: a static token, HTTP Basic, or none at all."""

from __future__ import annotations

import base64
from typing import Any

from proxy.auth.base import Credential, credential_for
from proxy.config.auth import BasicAuthConfig, StaticAuthConfig


class FixedAuthenticator:
    """Hands out one credential computed at start-up; ``None`` means pass-through.

    Nothing can renew a fixed credential, so an upstream 401 is always passed through.
    """

    reauth_on: frozenset[int] = frozenset()
    replay_limit = 0
    has_valid_token = True

    def __init__(self, credential: Credential | None) -> None:
        self._credential = credential

    async def credential(self) -> Credential | None:
        return self._credential

    async def renew(self, rejected: Credential) -> Credential | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"state": "static" if self._credential else "pass-through"}

    async def refresh(self) -> None:
        return None

    async def close(self) -> None:
        return None


def static_authenticator(config: StaticAuthConfig) -> FixedAuthenticator:
    return FixedAuthenticator(credential_for(config.token.get_secret_value(), config))


def basic_authenticator(config: BasicAuthConfig) -> FixedAuthenticator:
    # RFC 7617 §2.1: user-pass as UTF-8, then base64.
    pair = f"{config.username}:{config.password.get_secret_value()}".encode()
    return FixedAuthenticator(credential_for(base64.b64encode(pair).decode("ascii"), config))
