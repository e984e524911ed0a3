"""Tokens and their lifetimes, and the strict reading of a token endpoint's JSON answer.

A token's times are on the monotonic clock, so wall-clock jumps never stretch or cut its
life. Three instants matter (``lifetime`` L, margin M = min(refresh_margin, L/2)):

- ``renew_at`` = issue + L - 2M (at the latest): from here a request starts a background
  renewal and still gets the current token, so steady traffic never waits;
- ``stale_at`` = issue + L - M: from here the token is no longer handed out while renewal
  can succeed; requests wait for the (single) renewal instead;
- ``expires_at`` = issue + L: never used after this, whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from proxy.errors import TokenEndpointError

logger = logging.getLogger(__name__)

# Visible ASCII without spaces: RFC 6750's b64token plus the few characters real providers
# use (Salesforce tokens hold '!'). Anything else could split or inject a header (B14).
# Every validator here uses fullmatch: `$` would let a trailing newline through.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
MAX_TOKEN_LENGTH = 16 * 1024
_BEARER_TYPES = frozenset({"bearer"})


class Clock(Protocol):
    """Time as the token logic sees it; tests inject a fake that never really sleeps."""

    def monotonic(self) -> float: ...
    def wall(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    issued_at: float
    lifetime: float
    margin: float
    source: str
    """Where it came from, for operators: ``token endpoint`` or ``refresh``."""

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.lifetime

    @property
    def stale_at(self) -> float:
        return self.expires_at - self.margin

    @property
    def renew_at(self) -> float:
        return self.stale_at - self.margin


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What one successful token response gave: the token and, maybe, a new refresh token."""

    access_token: str = field(repr=False)
    lifetime: float
    refresh_token: str | None = field(default=None, repr=False)


def validate_token(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TokenEndpointError(f"the token endpoint's answer has no usable {what}")
    if len(value) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(value):
        raise TokenEndpointError(
            f"the {what} holds characters that cannot go in a header, or is too long"
        )
    return value


def parse_expires_in(value: Any, name: str = "expires_in") -> float | None:
    """A count (of seconds, or whatever ``name`` holds): a number or numeric string, floored;
    None when absent. Booleans, other strings and negatives are invalid answers (B7)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TokenEndpointError(f"{name} is not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise TokenEndpointError(f"{name} is not a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise TokenEndpointError(f"{name} is not a non-negative number")
    return float(math.floor(value))


def jwt_lifetime(token: str, now_wall: float) -> float | None:
    """Seconds left by a JWT's ``exp`` claim, or None if the token is no readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return max(0.0, float(exp) - now_wall)


def bounded_lifetime(seconds: float, max_ttl: float, connector: str) -> float:
    if seconds > max_ttl:
        logger.warning(
            "connector %s: token lifetime %.0fs clamped to max_ttl %.0fs",
            connector,
            seconds,
            max_ttl,
        )
        return max_ttl
    return seconds


def check_token_type(payload: dict[str, Any], custom_prefix: bool) -> None:
    """RFC 6749 §7.1: never use a token whose type we do not understand as a Bearer token."""
    token_type = payload.get("token_type")
    if token_type is None or custom_prefix:
        return
    if not isinstance(token_type, str) or token_type.lower() not in _BEARER_TYPES:
        raise TokenEndpointError(
            "the token endpoint issued a token that is not a Bearer token; set token_prefix "
            "to send it anyway"
        )
