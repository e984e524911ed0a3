"""Signed JWTs, made with PyJWT (imported only by connectors that use them): the RFC 7523
client assertions of ``private_key_jwt`` and ``client_secret_jwt``, and the authorization
grant assertions of ``grant: jwt_bearer`` (:mod:`proxy.tokens.jwt_bearer`).

Both load their keys through :func:`load_private_key`, once, in the build step, and sign
through :func:`sign`; each assertion is then made anew per token request (single-use
``jti``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.config.oauth2 import OAuth2AuthConfig

ASSERTION_LIFETIME = 60
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_private_key(pem: str, signing_alg: str) -> SigningKey:
    """An unencrypted PEM private key that fits ``signing_alg`` (an RSA key for RS256 and
    PS256, a P-256 key for ES256); raises ``ValueError`` with a message free of the key."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), None)
    except (ValueError, TypeError):
        raise ValueError("must be an unencrypted PEM private key") from None
    if signing_alg == "ES256":
        fits = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    else:
        fits = isinstance(key, rsa.RSAPrivateKey)
    if not fits:
        raise ValueError(f"does not fit signing_alg {signing_alg}")
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def load_signing_key(config: OAuth2AuthConfig) -> SigningKey:
    """The ``private_key`` of a ``private_key_jwt`` connector, checked against
    ``signing_alg``; raises ``ValueError`` with a message free of the key."""
    assert config.private_key is not None
    return load_private_key(config.private_key.get_secret_value(), config.signing_alg)


def new_jti() -> str:
    """A JWT ID no provider has seen: 144 random bits."""
    return secrets.token_urlsafe(18)


def sign(
    claims: Mapping[str, Any], key: SigningKey | str, signing_alg: str, key_id: str | None
) -> str:
    """``claims`` signed with ``key`` (a shared secret only for HS256), ``kid`` if given."""
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(dict(claims), key, algorithm=signing_alg, headers=headers)


def client_assertion(
    config: OAuth2AuthConfig, audience: str, now_wall: float, key: SigningKey | None
) -> str:
    """A fresh assertion: ``iss`` = ``sub`` = client id, ``aud`` = the token endpoint, a new
    ``jti``, valid for 60 seconds. ``key`` signs ``private_key_jwt``; the client secret
    signs ``client_secret_jwt``."""
    claims = {
        "iss": config.client_id,
        "sub": config.client_id,
        "aud": audience,
        "jti": new_jti(),
        "iat": int(now_wall),
        "exp": int(now_wall) + ASSERTION_LIFETIME,
    }
    if config.client_auth == "client_secret_jwt":
        assert config.client_secret is not None
        return sign(claims, config.client_secret.get_secret_value(), "HS256", None)
    assert key is not None
    return sign(claims, key, config.signing_alg, config.key_id)
