"""RFC 7523 client assertions for ``private_key_jwt`` and ``client_secret_jwt``, signed with
PyJWT (imported only by connectors that use them).

The signing key is loaded once, by the build step (:func:`load_signing_key`); each
assertion is then made anew per token request (single-use ``jti``).
"""

from __future__ import annotations

import secrets

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.config.oauth2 import OAuth2AuthConfig

ASSERTION_LIFETIME = 60
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_signing_key(config: OAuth2AuthConfig) -> SigningKey:
    """The ``private_key`` of a ``private_key_jwt`` connector, checked against
    ``signing_alg``; raises ``ValueError`` with a message free of the key."""
    assert config.private_key is not None
    try:
        key = serialization.load_pem_private_key(
            config.private_key.get_secret_value().encode(), None
        )
    except (ValueError, TypeError):
        raise ValueError("must be an unencrypted PEM private key") from None
    wanted = ec.EllipticCurvePrivateKey if config.signing_alg == "ES256" else rsa.RSAPrivateKey
    if not isinstance(key, wanted):
        raise ValueError(f"does not fit signing_alg {config.signing_alg}")
    return key


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
        "jti": secrets.token_urlsafe(18),
        "iat": int(now_wall),
        "exp": int(now_wall) + ASSERTION_LIFETIME,
    }
    if config.client_auth == "client_secret_jwt":
        assert config.client_secret is not None
        return jwt.encode(claims, config.client_secret.get_secret_value(), algorithm="HS256")
    assert key is not None
    headers = {"kid": config.key_id} if config.key_id else None
    return jwt.encode(claims, key, algorithm=config.signing_alg, headers=headers)
