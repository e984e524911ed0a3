"""Config of the extension grants of RFC 6749 §4.5: the JWT bearer grant (RFC 7523 §2.1) and
token exchange (RFC 8693), mixed into :class:`~proxy.config.oauth2.OAuth2AuthConfig`.

Only what can be judged without I/O is checked here: the service-account file is read,
and the signing key loaded, by the build step (:mod:`proxy.tokens.jwt_bearer`); whether a
``subject_connector`` exists and issues tokens is a rule across connectors
(:mod:`proxy.config.checks`).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from proxy.config.base import Check, Rules, SecretStr, block

NonEmpty = Annotated[str, Rules(min_length=1)]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
RESERVED_CLAIMS = ("iss", "sub", "aud", "iat", "exp", "jti")
"""Claims the grant sets itself; ``claims`` may not replace them (RFC 7523 §3)."""
MAX_ASSERTION_LIFETIME = 3600

EXTENSION_FIELDS_OF_GRANT = {
    "assertion": ("jwt_bearer",),
    "service_account_file": ("jwt_bearer",),
    "subject_token": ("token_exchange",),
    "subject_connector": ("token_exchange",),
    "subject_token_file": ("token_exchange",),
    "subject_token_type": ("token_exchange",),
    "actor_token": ("token_exchange",),
    "actor_token_type": ("token_exchange",),
    "requested_token_type": ("token_exchange",),
    "resource": ("token_exchange",),
}
"""Fields only these grants read (see ``FIELDS_OF_GRANT`` in :mod:`proxy.config.oauth2`)."""


def _no_reserved_claims(value: dict[str, Any]) -> dict[str, Any]:
    clashes = [name for name in RESERVED_CLAIMS if name in value]
    if clashes:
        raise ValueError(f"must not set {', '.join(clashes)}: the grant sets them")
    return value


def _not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("String should have at least 1 character")
    return value


@block
class AssertionConfig:
    """The JWT a ``jwt_bearer`` connector signs for every token request (RFC 7523 §3).

    With a ``service_account_file`` every field is optional: the file gives the issuer,
    the key, its id and the audience, and a field given here overrides the file's.
    """

    issuer: NonEmpty | None = None  # 'iss': who signs
    subject: NonEmpty | None = None  # 'sub': on whose behalf (default: issuer)
    audience: NonEmpty | None = None  # 'aud' (default: the token endpoint URL)
    private_key: SecretStr | None = None  # PEM key that signs (loaded by the build step)
    key_id: NonEmpty | None = None  # 'kid' of the JWT header
    signing_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    lifetime: Annotated[int, Rules(gt=0, le=MAX_ASSERTION_LIFETIME)] = 300  # 'iat' to 'exp'
    # More claims, as given.
    claims: Annotated[dict[str, Any], Check(_no_reserved_claims)] = dataclasses.field(
        default_factory=dict
    )


@block
class ExtensionGrantFields:
    """The fields of ``grant: jwt_bearer`` and ``grant: token_exchange``."""

    assertion: AssertionConfig | None = None  # jwt_bearer: the JWT to sign
    # jwt_bearer: a Google-style service-account JSON key: a file's path, or the JSON itself
    # (as ${VAR} or file: give it); secret either way.
    service_account_file: Annotated[SecretStr, Check(_not_empty)] | None = None
    subject_token: SecretStr | None = None  # token_exchange: the token to exchange
    subject_connector: NonEmpty | None = None  # token_exchange: this connector's token
    # token_exchange: read the subject token from this file before each exchange (a
    # projected token that its platform rotates).
    subject_token_file: NonEmpty | None = None
    subject_token_type: NonEmpty = ACCESS_TOKEN_TYPE
    actor_token: SecretStr | None = None  # token_exchange: who acts
    actor_token_type: NonEmpty | None = None
    # The answer's issued_token_type must be this one.
    requested_token_type: NonEmpty | None = None
    # token_exchange: where the token is used (a repeated parameter).
    resource: list[str] | str | None = None

    def extension_grant_problem(self, grant: str) -> str | None:
        """What ``grant`` misses or has twice, as one sentence; None when it is complete."""
        if grant == "jwt_bearer":
            if self.service_account_file is not None:
                return None
            assertion = self.assertion or AssertionConfig()
            missing = [
                f"assertion.{name}"
                for name in ("issuer", "private_key")
                if getattr(assertion, name) is None
            ]
            if missing:
                return f"grant 'jwt_bearer' needs service_account_file or {', '.join(missing)}"
        if grant == "token_exchange":
            given = (self.subject_token, self.subject_token_file, self.subject_connector)
            if sum(value is not None for value in given) != 1:
                return (
                    "grant 'token_exchange' needs exactly one of subject_token, "
                    "subject_token_file, subject_connector"
                )
            if self.actor_token is not None and self.actor_token_type is None:
                return "grant 'token_exchange' needs actor_token_type with actor_token"
            if self.actor_token is None and self.actor_token_type is not None:
                return "grant 'token_exchange': actor_token_type without actor_token"
        return None

    @property
    def resources(self) -> tuple[str, ...]:
        if self.resource is None:
            return ()
        return (self.resource,) if isinstance(self.resource, str) else tuple(self.resource)
