"""Tokens and their lifetimes, and the strict reading of a token endpoint's answer.

A token's times are on the monotonic clock, so wall-clock jumps never stretch or cut its
life. With lifetime L and margin M = min(refresh_margin, L/2), its :class:`Phase` is:

- ``FRESH`` until issue + L - M (the *usable lifetime*): handed out, nothing else happens;
- ``RENEWABLE`` from there: still handed out, and the first request starts the one
  background renewal, so steady traffic causes one token request per usable lifetime and no
  request waits while the provider answers within the margin's first three quarters;
- ``STALE`` for the last quarter of the margin: not handed out while a renewal can still
  succeed (a token sent now might expire before the upstream reads it); requests wait;
- ``EXPIRED`` from issue + L: never used, whatever happens.

:meth:`Token.phase` is the only place that decides this; the hot path, ``/connectors`` and
``/ready`` all ask it.
"""

from __future__ import annotations

import asyncio
import base64
import enum
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


MAX_MARGIN_SHARE = 0.5
"""The margin never takes more than this share of a lifetime (the documented cap: half)."""
GUARD_SHARE = 0.25
"""The last share of the margin in which a token is no longer handed out."""


class Phase(enum.Enum):
    FRESH = "fresh"
    RENEWABLE = "renewable"
    STALE = "stale"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    issued_at: float
    lifetime: float
    margin: float
    """The effective margin: ``refresh_margin`` capped at half the lifetime."""
    source: str
    """Where it came from, for operators: ``token endpoint`` or ``refresh``."""

    @classmethod
    def issued(
        cls, value: str, at: float, lifetime: float, refresh_margin: float, source: str
    ) -> Token:
        margin = min(refresh_margin, lifetime * MAX_MARGIN_SHARE)
        return cls(value, at, lifetime, margin, source)

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.lifetime

    @property
    def renew_at(self) -> float:
        return self.expires_at - self.margin

    @property
    def stale_at(self) -> float:
        return self.expires_at - self.margin * GUARD_SHARE

    def phase(self, now: float) -> Phase:
        if now < self.renew_at:
            return Phase.FRESH
        if now < self.stale_at:
            return Phase.RENEWABLE
        if now < self.expires_at:
            return Phase.STALE
        return Phase.EXPIRED


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What one successful token response gave: the access token and its lifetime.

    A rotated refresh token is read apart from it (:meth:`Grant.refresh_token_in`), before
    the rest of the answer is judged, so an answer unusable otherwise never loses it.
    """

    access_token: str = field(repr=False)
    lifetime: float


@dataclass(frozen=True)
class Authorized:
    """What a person's one authorization (device or browser) yielded."""

    issued: IssuedToken
    refresh_token: str | None = field(repr=False)
    issued_at: float
    """On the monotonic clock, as the token manager counts lifetimes."""
    bearer: str | None = field(default=None, repr=False)
    """The answer's access token, for asking the userinfo endpoint who authorized."""
    account: str | None = None
    """Who authorized, as the provider's userinfo names them (None: not known)."""


def validate_token(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TokenEndpointError(f"the token endpoint's answer has no usable {what}")
    if len(value) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(value):
        raise TokenEndpointError(
            f"the {what} holds characters that cannot go in a header, or is too long"
        )
    return value


def usable_refresh_token(value: Any) -> str | None:
    """``value`` if it is a refresh token we can send back, else None (never raises)."""
    if value is None:
        return None
    try:
        return validate_token(value, "refresh token")
    except TokenEndpointError:
        logger.warning("the token endpoint sent an unusable refresh token; it was ignored")
        return None


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
