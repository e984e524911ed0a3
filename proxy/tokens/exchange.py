"""``grant: token_exchange`` (RFC 8693): another token is exchanged for this connector's.

The request is ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` with
``subject_token`` and ``subject_token_type``, and when configured ``actor_token`` and
``actor_token_type``, ``requested_token_type``, ``audience``, ``resource`` (repeated, one
parameter per value) and ``scope``.

- **The answer.** When a ``requested_token_type`` was asked for, the answer's
  ``issued_token_type`` must be that type (a mismatch or none is a token endpoint error
  that names the types only when they look like URNs or short names, never other text of
  the provider's). ``token_type: N_A`` is accepted (RFC 8693 §2.2.1: the issued token is
  no access token), and the token is sent as the connector says (``token_prefix``).
- **No refresh tokens.** RFC 8693 allows one in the answer, but it is ignored: the subject
  token is the authority, and a token refreshed on its own would outlive a subject that
  was renewed or revoked. Renewal is a new exchange.
- **Chaining** (``subject_connector``): the subject is that connector's *current* token,
  asked of its authenticator on every request (its hot path: no token request while it
  holds a fresh one). :class:`ExchangeTokenManager` remembers which subject token the held
  token was exchanged from; when the subject's token has changed, the held one is dropped
  (with a token store, compare-and-invalidate) and the next exchange sends the new one,
  once however many requests wait (the manager's single flight). A token adopted from the
  store is taken as exchanged from the subject token current at adoption. The subject
  connector's failure is the client's answer (its 502 or 503), named as the subject's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.auth.base import Credential
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.errors import ProxyError, TokenEndpointError
from proxy.secrets.redaction import REDACTOR
from proxy.tokens.endpoint import FormValue, TokenRequest, TokenSender
from proxy.tokens.grant import RequestContext
from proxy.tokens.manager import TokenManager
from proxy.tokens.oauth2 import OAuth2Grant
from proxy.tokens.shared import Obtained

if TYPE_CHECKING:
    from proxy.tokens.assertions import SigningKey
    from proxy.tokens.model import Token

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
# What a token type may look like to be named in an error: a URN, or a short name (N_A).
_NAMEABLE_TYPE = re.compile(r"urn(:[A-Za-z0-9][A-Za-z0-9._~-]*){2,8}|[A-Za-z0-9_.-]{1,40}")


def shown_type(value: Any) -> str:
    """``value`` quoted if it looks like a token type, else a placeholder: never echo a
    provider's arbitrary text."""
    if isinstance(value, str) and len(value) <= 120 and _NAMEABLE_TYPE.fullmatch(value):
        return repr(value)
    return "a type it cannot name"


def read_subject_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace dropped), read now: platforms rotate
    projected tokens in place (Kubernetes: hourly), so a copy read at start goes stale."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise TokenEndpointError(f"cannot read subject_token_file ({reason})") from None
    if not token:
        raise TokenEndpointError("subject_token_file is empty")
    return token


class ExchangeGrant(OAuth2Grant):
    """Builds RFC 8693 requests from a fixed ``subject_token``, a ``subject_token_file``
    read before each exchange, or a linked connector's current token."""

    def __init__(
        self,
        config: OAuth2AuthConfig,
        connector: str,
        signing_key: SigningKey | None = None,
    ) -> None:
        super().__init__(config, connector, signing_key)
        self.subject: TokenManager | None = None
        """The ``subject_connector``'s authenticator, linked once every connector is open."""
        fixed = config.subject_token
        self.subject_token: str | None = fixed.get_secret_value() if fixed else None
        """The latest subject token known (fixed, or the subject connector's)."""
        self.sent_subject: str | None = None
        """The subject token of the last request built."""

    def __repr__(self) -> str:
        return f"ExchangeGrant({self.connector!r})"

    def link(self, subject: TokenManager) -> None:
        self.subject = subject

    async def current_subject(self) -> str:
        """The subject connector's current token; raises its error, naming it."""
        if self.subject is None:
            raise TokenEndpointError("the subject connector is not linked (an internal error)")
        try:
            self.subject_token = await self.subject.access_token()
        except ProxyError as exc:  # a fresh error object per waiter: ours to reword
            exc.message = f"subject connector {self.config.subject_connector!r}: {exc.message}"
            raise
        return self.subject_token

    async def prepare(self, send: TokenSender) -> None:
        """Discovery, then the subject token now (before each exchange): the file's current
        content (``subject_token_file``), or the subject connector's current token."""
        await super().prepare(send)
        if self.config.subject_token_file is not None:
            self.subject_token = read_subject_token(self.config.subject_token_file)
            REDACTOR.hold(f"{self.connector}#subject", [self.subject_token])
        if self.config.subject_connector is None:
            return
        try:
            await self.current_subject()
        except TokenEndpointError:
            raise
        except ProxyError as exc:  # the subject's back-off: this exchange failed with it
            raise TokenEndpointError(exc.message) from None

    def primary_request(self, current: RequestContext) -> TokenRequest:
        config = self.config
        if self.subject_token is None:
            raise TokenEndpointError("no subject token to exchange yet")
        self.sent_subject = self.subject_token
        form: dict[str, FormValue] = {
            "grant_type": config.grant_type or TOKEN_EXCHANGE_GRANT,
            "subject_token": self.subject_token,
            "subject_token_type": config.subject_token_type,
        }
        if config.actor_token is not None and config.actor_token_type is not None:
            form["actor_token"] = config.actor_token.get_secret_value()
            form["actor_token_type"] = config.actor_token_type
        if config.requested_token_type:
            form["requested_token_type"] = config.requested_token_type
        if config.audience:
            form["audience"] = config.audience
        if config.resources:
            form["resource"] = config.resources
        if config.scope:
            form["scope"] = config.scope
        return self._request(self.token_url, form, current, replayable=True)

    def check_answer(self, payload: dict[str, Any]) -> None:
        wanted, issued = self.config.requested_token_type, payload.get("issued_token_type")
        if wanted is not None and issued != wanted:
            if issued is None:
                raise TokenEndpointError(
                    "the token endpoint's answer has no issued_token_type (requested "
                    f"{shown_type(wanted)})"
                )
            raise TokenEndpointError(
                f"the token endpoint issued {shown_type(issued)}, not the requested "
                f"{shown_type(wanted)}"
            )
        token_type = payload.get("token_type")
        if isinstance(token_type, str) and token_type.upper() == "N_A":
            return  # RFC 8693 §2.2.1: not an access token; sent as configured
        super().check_answer(payload)


class ExchangeTokenManager(TokenManager):
    """The token manager of a ``subject_connector`` exchange: it renews the exchanged token
    when the subject connector's token changes (see the module docstring). Ordinary
    connectors never pay for this: they are plain :class:`TokenManager` objects."""

    _exchanged_from: str | None = None
    """The subject token the held token was exchanged from."""

    @property
    def exchange(self) -> ExchangeGrant:
        grant = self.grant
        assert isinstance(grant, ExchangeGrant)
        return grant

    async def credential(self) -> Credential:
        subject = await self.exchange.current_subject()
        held = self._held
        if held is not None and self._exchanged_from is None:
            # Adopted from the store before any subject token was known here (warm-up):
            # taken as exchanged from the subject's current one, as at any adoption.
            self._exchanged_from = subject
        elif held is not None and subject != self._exchanged_from:
            self._held = None  # requests from now on wait for the one new exchange
            self._event(
                logging.INFO,
                "subject_changed",
                "the subject connector's token changed; exchanging the new one",
            )
            if self._shared is not None:  # the fleet drops it once, and never adopts it again
                await self._shared.invalidate(held.token.value)
        return await super().credential()

    def _publish(self, obtained: Obtained) -> Token:
        token = super()._publish(obtained)
        grant = self.exchange
        from_store = obtained.source == "store"
        self._exchanged_from = grant.subject_token if from_store else grant.sent_subject
        return token

    def inherit(self, old: TokenManager) -> bool:
        if not super().inherit(old):
            return False
        if isinstance(old, ExchangeTokenManager):
            self._exchanged_from = old._exchanged_from
        return True
