"""``grant: jwt_bearer`` (RFC 7523 §2.1): a JWT signed with the connector's key is the grant.

Every token request, every retry included, carries a new assertion: ``iss``, ``sub``,
``aud``, ``iat`` and ``exp`` (= ``iat`` + ``lifetime``, from the clock's wall time), a new
``jti`` and the configured ``claims``; ``kid`` names the key when a key id is known. The
wire form is ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>``.

- With ``assertion`` only: ``sub`` defaults to ``issuer``, ``aud`` to the token endpoint
  URL, and the scopes go into the ``scope`` form parameter (RFC 7523 §2.1).
- With a Google-style ``service_account_file``: ``iss`` = ``client_email``, ``kid`` =
  ``private_key_id``, ``aud`` = ``token_uri`` (also the default ``token_url``), and the
  scopes go into the ``scope`` claim, as Google expects; ``sub`` only when
  ``assertion.subject`` is given (domain-wide delegation). Fields of ``assertion`` win.

The file is read and the key loaded once, by the build step (:func:`plan_assertion`);
errors name the field, never anything the file holds. Refresh tokens are not kept: a new
assertion is always at hand, and holding one would only add state to guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from proxy.config.grants import AssertionConfig
from proxy.config.oauth2 import OAuth2AuthConfig, token_endpoint_url
from proxy.tokens.assertions import SigningKey, load_private_key, new_jti, sign
from proxy.tokens.endpoint import FormValue, TokenRequest
from proxy.tokens.grant import RequestContext
from proxy.tokens.oauth2 import OAuth2Grant

if TYPE_CHECKING:
    from proxy.consent.links import ConsentLinks

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "private_key_id", "token_uri")


@dataclass(frozen=True)
class AssertionPlan:
    """What every assertion of one connector is made from, resolved by the build step."""

    issuer: str
    subject: str | None
    audience: str | None
    """None: the token endpoint URL, known once discovery ran."""
    key: SigningKey = field(repr=False)
    key_id: str | None
    signing_alg: str
    lifetime: int
    claims: Mapping[str, Any] = field(repr=False)
    scope_claim: bool
    """True: the scopes go into the ``scope`` claim (Google), not the form."""
    token_url: str | None
    """The service-account file's ``token_uri``; None without a file."""


def read_service_account(value: str, where: str) -> dict[str, str]:
    """The four fields of a service-account key, given as a file's path or as the JSON
    itself (``${GOOGLE_CREDENTIALS}``, ``file:``); ``ValueError`` as ``where: message``,
    naming neither the value nor anything the key holds (it is secret either way)."""
    if value.lstrip().startswith("{"):
        raw = value.encode()
    else:
        try:
            raw = Path(value).read_bytes()
        except OSError as exc:
            raise ValueError(f"{where}: cannot read the file ({exc.strerror or 'error'})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError(f"{where}: is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: is not a JSON object")
    missing = [
        name
        for name in SERVICE_ACCOUNT_FIELDS
        if not isinstance(data.get(name), str) or not data[name]
    ]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    try:  # RFC 6749 §3.2: the assertion and the token it buys travel to it
        token_endpoint_url(data["token_uri"])
    except ValueError as exc:
        raise ValueError(f"{where}: its token_uri {exc}") from None
    return {name: data[name] for name in SERVICE_ACCOUNT_FIELDS}


def plan_assertion(config: OAuth2AuthConfig, where: str) -> AssertionPlan:
    """The assertion plan of a ``jwt_bearer`` connector (``where``: its ``auth`` path);
    raises ``ValueError`` as ``field.path: message``."""
    given = config.assertion or AssertionConfig()
    file: dict[str, str] = {}
    if config.service_account_file is not None:
        file = read_service_account(
            config.service_account_file.get_secret_value(), f"{where}.service_account_file"
        )
    if given.private_key is not None:
        pem, what = given.private_key.get_secret_value(), f"{where}.assertion.private_key:"
    else:  # the config requires one or the other; the file was checked for its fields
        pem, what = file["private_key"], f"{where}.service_account_file: its private_key"
    try:
        key = load_private_key(pem, given.signing_alg)
    except ValueError as exc:
        raise ValueError(f"{what} {exc}") from None
    issuer = given.issuer or file["client_email"]
    return AssertionPlan(
        issuer=issuer,
        # Google: no sub unless delegating; RFC 7523 §3 otherwise wants one (default iss).
        subject=given.subject or (None if file else issuer),
        audience=given.audience or file.get("token_uri"),
        key=key,
        key_id=given.key_id or file.get("private_key_id"),
        signing_alg=given.signing_alg,
        lifetime=given.lifetime,
        claims=dict(given.claims),
        scope_claim=bool(file),
        token_url=file.get("token_uri"),
    )


class JwtBearerGrant(OAuth2Grant):
    """The RFC 7523 §2.1 grant: one new signed assertion per token request."""

    def __init__(
        self,
        config: OAuth2AuthConfig,
        connector: str,
        assertion: AssertionPlan,
        signing_key: SigningKey | None = None,
        links: ConsentLinks | None = None,
    ) -> None:
        """``signing_key``: the client's own ``private_key_jwt`` key, if it uses one."""
        super().__init__(config, connector, signing_key, links)
        self.assertion_plan = assertion

    @property
    def token_url(self) -> str:
        """The configured one, else the service account's ``token_uri``, else discovered."""
        return self.config.token_url or self.assertion_plan.token_url or super().token_url

    def assertion(self, token_url: str, now_wall: float) -> str:
        """A new signed assertion for a request to ``token_url`` at ``now_wall``."""
        plan = self.assertion_plan
        issued = int(now_wall)
        claims: dict[str, Any] = dict(plan.claims)
        scope = self.config.scope
        if plan.scope_claim and scope:
            claims["scope"] = scope
        claims |= {
            "iss": plan.issuer,
            "aud": plan.audience or token_url,
            "iat": issued,
            "exp": issued + plan.lifetime,
            "jti": new_jti(),
        }
        if plan.subject is not None:
            claims["sub"] = plan.subject
        return sign(claims, plan.key, plan.signing_alg, plan.key_id)

    def primary_request(self, current: RequestContext) -> TokenRequest:
        config, url = self.config, self.token_url
        form: dict[str, FormValue] = {
            "grant_type": config.grant_type or JWT_BEARER_GRANT,
            "assertion": self.assertion(url, current.now_wall),
        }
        if config.scope and not self.assertion_plan.scope_claim:
            form["scope"] = config.scope
        if config.audience:
            form["audience"] = config.audience
        return self._request(url, form, current, replayable=True)
