"""The authorization-code flow (RFC 6749 §4.1) with PKCE (RFC 7636), as both the browser
endpoints (:mod:`proxy.consent.web`) and ``tokenproxy authorize`` run it.

Guarantees:

- **A callback is accepted only for the authorization it answers**: its ``state`` must equal
  the one sent (compared in constant time), the authorization must be younger than
  :data:`STATE_LIFETIME`, and an ``iss`` naming another issuer (RFC 9207, a mix-up attack)
  is refused. The caller spends the state once (:meth:`TokenStore.claim_once`).
- **The code is redeemed once**, with the PKCE verifier and the same ``redirect_uri``, and
  never retried: a code is single use, and a lost answer may have spent it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import (
    TokenSender,
    json_object_or_none,
    provider_now,
)
from proxy.tokens.grant import RequestContext
from proxy.tokens.model import Authorized, Clock
from proxy.tokens.oauth2 import OAuth2Grant

STATE_LIFETIME = 600.0
"""Seconds a person has between the start and the provider's callback."""
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what codes look like; shown as is
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")  # a provider's description: no control characters
_MAX_SHOWN = 200


class ConsentError(Exception):
    """The authorization did not complete; ``message`` is safe to show to the person."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused
        """The provider (or the person) refused: this authorization is over."""


@dataclass(frozen=True)
class Pending:
    """One authorization under way: what its callback must match and its exchange sends."""

    connector: str
    state: str = field(repr=False)
    verifier: str | None = field(repr=False)
    """The PKCE code verifier; None with ``pkce: false``."""
    redirect_uri: str
    started_wall: float

    @classmethod
    def begin(cls, connector: str, redirect_uri: str, pkce: bool, now_wall: float) -> Pending:
        verifier = secrets.token_urlsafe(48) if pkce else None  # 64 characters (43-128)
        return cls(connector, secrets.token_urlsafe(32), verifier, redirect_uri, now_wall)

    def expired(self, now_wall: float) -> bool:
        return not 0 <= now_wall - self.started_wall <= STATE_LIFETIME

    @property
    def state_id(self) -> str:
        """Names the state without revealing it (its single use is recorded by this)."""
        return hashlib.sha256(self.state.encode()).hexdigest()[:32]


def code_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorization_url(grant: OAuth2Grant, pending: Pending, start_query: Mapping[str, str]) -> str:
    """Where the browser goes to consent: the configured or discovered endpoint (its own
    query kept) with the request of RFC 6749 §4.1.1, the static ``auth_params`` and the
    ``auth_params_map`` values taken from the start URL's query."""
    config = grant.config
    params = {
        "response_type": "code",
        "client_id": config.client_id or "",
        "redirect_uri": pending.redirect_uri,
    }
    if config.scope:
        params["scope"] = config.scope
    params["state"] = pending.state
    if pending.verifier is not None:
        params["code_challenge"] = code_challenge(pending.verifier)
        params["code_challenge_method"] = "S256"
    params.update(config.auth_params)
    for provider_param, query_param in config.auth_params_map.items():
        value = start_query.get(query_param)
        if value is not None:
            params[provider_param] = value
    return str(URL(grant.authorization_endpoint()).update_query(params))


def code_from_callback(query: Mapping[str, str], pending: Pending, grant: OAuth2Grant) -> str:
    """The authorization code of a callback that answers ``pending``; raises ConsentError.
    ``grant`` (discovered) says which issuer must have answered."""
    state = query.get("state", "")
    if not hmac.compare_digest(state.encode(), pending.state.encode()):
        raise ConsentError("the answer does not belong to this authorization (state mismatch)")
    iss = query.get("iss")
    if iss is None and grant.issuer_in_callbacks:
        raise ConsentError("the answer does not name its issuer (iss), as this provider does")
    if iss is not None and grant.issuer is not None and iss != grant.issuer:
        raise ConsentError("the answer comes from another issuer than this connector's (iss)")
    error = query.get("error")
    if error is not None:
        shown = error if _ERROR_CODE.fullmatch(error) else "invalid"
        description = _UNPRINTABLE.sub("", query.get("error_description", ""))[:_MAX_SHOWN]
        raise ConsentError(
            f"the provider refused the authorization ({shown})"
            + (f": {description}" if description else ""),
            refused=True,
        )
    code = query.get("code", "")
    if not code:
        raise ConsentError("the provider's answer has no authorization code")
    return code


async def redeem(
    grant: OAuth2Grant, send: TokenSender, clock: Clock, *, code: str, pending: Pending
) -> Authorized:
    """Exchange the code once (RFC 6749 §4.1.3); raises TokenEndpointError."""
    await grant.prepare(send)
    issued_at = clock.monotonic() - clock.wall() % 1  # as the token manager counts it
    context = RequestContext(now_wall=clock.wall())
    response = await send(grant.code_request(code, pending.redirect_uri, pending.verifier, context))
    refresh_token = grant.refresh_token_in(response, refreshing=False)
    try:
        issued = grant.read(
            response, refreshing=False, now_wall=provider_now(response, clock.wall())
        )
    except TokenEndpointError as exc:
        if exc.oauth_error == "invalid_grant":
            raise TokenEndpointError(
                "the provider refused the code (invalid_grant): it expired or was used; "
                "start again",
                oauth_error="invalid_grant",
            ) from None
        raise
    bearer = (json_object_or_none(response) or {}).get("access_token")
    return Authorized(
        issued, refresh_token, issued_at, bearer=bearer if isinstance(bearer, str) else None
    )
