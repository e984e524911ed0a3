"""RFC 7523 client assertions for ``private_key_jwt`` and ``client_secret_jwt``, signed with
PyJWT (imported only by connectors that use them)."""

from __future__ import annotations

import functools
import secrets

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.config.oauth2 import OAuth2AuthConfig

ASSERTION_LIFETIME = 60


@functools.lru_cache(maxsize=64)
def _signing_key(pem: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    # The config model checked that the key type fits signing_alg.
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def client_assertion(config: OAuth2AuthConfig, audience: str, now_wall: float) -> str:
    """A fresh assertion: ``iss`` = ``sub`` = client id, ``aud`` = the token endpoint, a new
    ``jti``, valid for 60 seconds."""
    claims = {
        "iss": config.client_id,
        "sub": config.client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(18),
        "iat": int(now_wall),
        "exp": int(now_wall) + ASSERTION_LIFETIME,
    }
    if config.client_auth == "client_secret_jwt":
        assert config.client_secret is not None
        return jwt.encode(claims, config.client_secret.get_secret_value(), algorithm="HS256")
    assert config.private_key is not None
    key = _signing_key(config.private_key.get_secret_value())
    headers = {"kid": config.key_id} if config.key_id else None
    return jwt.encode(claims, key, algorithm=config.signing_alg, headers=headers)
