"""What the token store holds for one connector, sealed with the master key.

A record carries the access token in use (with its wall-clock issue time and lifetime, so
any process can place it on its own monotonic clock), the refresh token, and a hash of the
configured seed refresh token it descends from. It is encrypted whole (AES-GCM, the master
key) and names its own key inside, so a corrupt, tampered, foreign or undecryptable entry
reads as a miss, never as a token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from proxy.config.base import Secret
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.config.paths import JsonPath
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
        # How a person is asked to authorize, and how we show who did: not what they granted.
        "redirect_uri",
        "auth_params_map",
        "pkce",
        "userinfo_url",
        "userinfo_fields",
        "token_store",
    }
)


# Credentials say who asks, not which token: rotating a client secret must not orphan the
# refresh token a person once granted. Every other secret (extra_params, token-endpoint
# headers, a custom request's subject) can change which token comes back, so it counts.
_CREDENTIALS = frozenset({"client_secret", "password", "refresh_token", "private_key"})


_MASKED = "**********"
# A secret that is not a string (a custom request's JSON body) has always been kept masked
# here: revealing it now would rename every such connector's stored token.


def _revealed(value: Any) -> Any:
    """A config value as plain data, secrets revealed, the same since the first release
    (the names of stored tokens depend on it)."""
    if isinstance(value, Secret):
        secret = value.get_secret_value()
        return secret if isinstance(secret, str) else _MASKED
    if isinstance(value, JsonPath):
        return value.text
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _revealed(getattr(value, f.name)) for f in _fields(value)}
    if isinstance(value, dict):
        return {str(k): _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    return value


def _fields(block: Any) -> list[dataclasses.Field[Any]]:
    """What the config file can set (not what validation notes, such as ``configured``)."""
    return [f for f in dataclasses.fields(block) if f.init]


def token_material(connector: str, auth: TokenLifecycleConfig) -> bytes:
    """What defines the token ``auth`` obtains for ``connector``: its token URL, client,
    grant, scopes, audience, subject and request shape, secrets included, so two connectors
    or two settings never share a token (and a reload keeps a token only if this is equal)."""
    defining = {
        f.name: _revealed(getattr(auth, f.name))
        for f in _fields(auth)
        if f.name not in _NOT_DEFINING and f.name not in _CREDENTIALS
    }
    return orjson.dumps([connector, defining], option=orjson.OPT_SORT_KEYS, default=str)


def token_key(connector: str, auth: TokenLifecycleConfig, keys: MasterKeys) -> str:
    """The store's name for that token: :func:`token_material` keyed with the master key
    (HMAC-SHA-256), so the name never helps to guess a secret."""
    assert keys.current is not None, "the store always has a master key"
    material = token_material(connector, auth)
    return hmac.new(keys.current, material, hashlib.sha256).hexdigest()[:32]


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
    account: str | None = None
    """Who authorized an interactive grant, as the provider's userinfo named them."""

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
