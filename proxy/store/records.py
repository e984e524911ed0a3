"""What the token store holds for one connector, sealed with the master key.

A record carries the access token in use (with its wall-clock issue time and lifetime, so
any process can place it on its own monotonic clock), the refresh token, and a hash of the
configured seed refresh token it descends from. It is encrypted whole (AES-GCM, the master
key) and names its own key inside, so a corrupt, tampered, foreign or undecryptable entry
reads as a miss, never as a token.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.secrets.envelope import EnvelopeError, MasterKeys

logger = logging.getLogger(__name__)

RECORD_VERSION = 1

# Fields that change when, how often or where a token is sent, not which token it is.
_NOT_DEFINING = frozenset(
    {
        "header",
        "token_prefix",
        "query_param",
        "refresh_margin",
        "default_ttl",
        "max_ttl",
        "reauth_on",
        "reauth_interval",
        "reauth_max_body",
        "tls",
    }
)


def token_key(auth: TokenLifecycleConfig) -> str:
    """A name for the token ``auth`` defines: a hash of its token URL, client, grant, scopes,
    audience, subject and request shape. Secret fields dump masked, so the key never helps
    to guess one; two connectors with the same settings share one token."""
    defining = {
        name: value
        for name, value in auth.model_dump(mode="json").items()
        if name not in _NOT_DEFINING
    }
    digest = hashlib.sha256(orjson.dumps(defining, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:32]


def fingerprint(token: str) -> str:
    """Names a token without revealing it (compare-and-invalidate, logs)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def seed_hash(seed: str | None) -> str:
    return hashlib.sha256((seed or "").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TokenRecord:
    key: str
    seed_hash: str
    """Which configured seed refresh token this state descends from."""
    access_token: str | None = field(default=None, repr=False)
    issued_wall: float = 0.0
    lifetime: float = 0.0
    refresh_token: str | None = field(default=None, repr=False)
    written_wall: float = 0.0
    """When it was written (wall clock): of two records, the later one is the newer state."""

    @property
    def fingerprint(self) -> str | None:
        return None if self.access_token is None else fingerprint(self.access_token)

    def without_access_token(self) -> TokenRecord:
        return replace(self, access_token=None, issued_wall=0.0, lifetime=0.0)

    def expires_wall(self) -> float:
        return self.issued_wall + self.lifetime

    def seal(self, keys: MasterKeys) -> str:
        return keys.encrypt(orjson.dumps({"v": RECORD_VERSION, **asdict(self)}).decode())

    @classmethod
    def unseal(cls, sealed: str | bytes, key: str, keys: MasterKeys) -> TokenRecord | None:
        """The record, or None (logged, without the value) if it cannot be trusted."""
        text = sealed.decode(errors="replace") if isinstance(sealed, bytes) else sealed
        try:
            data: Any = orjson.loads(keys.decrypt(text))
            if data.pop("v") != RECORD_VERSION or data.get("key") != key:
                raise ValueError("a record of another version or key")
            return cls(**data)
        except (EnvelopeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning(
                "token store: the entry %s is unusable (%s); treated as missing",
                key,
                type(exc).__name__,
            )
            return None
