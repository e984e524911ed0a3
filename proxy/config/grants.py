"""Config of the extension grants of RFC 6749 §4.5: the JWT bearer grant (RFC 7523 §2.1) and
token exchange (RFC 8693), mixed into :class:`~proxy.config.oauth2.OAuth2AuthConfig`.

Only what can be judged without I/O is checked here: the service-account file is read,
and the signing key loaded, by the build step (:mod:`proxy.tokens.jwt_bearer`); whether a
``subject_connector`` exists and issues tokens is a rule across connectors
(:mod:`proxy.config.checks`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from proxy.config.base import StrictModel

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


class AssertionConfig(StrictModel):
    """The JWT a ``jwt_bearer`` connector signs for every token request (RFC 7523 §3).

    With a ``service_account_file`` every field is optional: the file gives the issuer,
    the key, its id and the audience, and a field given here overrides the file's.
    """

    issuer: str | None = Field(None, min_length=1, description="'iss': who signs")
    subject: str | None = Field(
        None, min_length=1, description="'sub': on whose behalf (default: issuer)"
    )
    audience: str | None = Field(
        None, min_length=1, description="'aud' (default: the token endpoint URL)"
    )
    private_key: SecretStr | None = Field(
        None, description="PEM key that signs (loaded and checked by the build step)"
    )
    key_id: str | None = Field(None, min_length=1, description="'kid' of the JWT header")
    signing_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    lifetime: int = Field(
        300, gt=0, le=MAX_ASSERTION_LIFETIME, description="seconds from 'iat' to 'exp'"
    )
    claims: dict[str, Any] = Field(default_factory=dict, description="more claims, as given")

    @field_validator("claims")
    @classmethod
    def _no_reserved_claims(cls, value: dict[str, Any]) -> dict[str, Any]:
        clashes = [name for name in RESERVED_CLAIMS if name in value]
        if clashes:
            raise ValueError(f"must not set {', '.join(clashes)}: the grant sets them")
        return value


class ExtensionGrantFields(StrictModel):
    """The fields of ``grant: jwt_bearer`` and ``grant: token_exchange``."""

    assertion: AssertionConfig | None = Field(None, description="jwt_bearer: the JWT to sign")
    service_account_file: SecretStr | None = Field(
        None,
        min_length=1,
        description="jwt_bearer: a Google-style service-account JSON key: a file's path, or "
        "the JSON itself (as ${VAR} or file: give it); secret either way",
    )
    subject_token: SecretStr | None = Field(
        None, description="token_exchange: the token to exchange (a fixed value)"
    )
    subject_connector: str | None = Field(
        None, min_length=1, description="token_exchange: exchange this connector's token"
    )
    subject_token_file: str | None = Field(
        None,
        min_length=1,
        description="token_exchange: read the subject token from this file before each "
        "exchange (a projected token that its platform rotates)",
    )
    subject_token_type: str = Field(ACCESS_TOKEN_TYPE, min_length=1)
    actor_token: SecretStr | None = Field(None, description="token_exchange: who acts")
    actor_token_type: str | None = Field(None, min_length=1)
    requested_token_type: str | None = Field(
        None, min_length=1, description="the answer's issued_token_type must be this one"
    )
    resource: list[str] | str | None = Field(
        None, description="token_exchange: where the token is used (repeated parameter)"
    )

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
