"""The only place that dispatches on the ``auth.type`` of a connector's config.

:func:`plan_auth` makes what needs no event loop (fixed credentials, grants with their
signing keys loaded) and is run by the build step's first, pure phase; :func:`open_auth`
turns a plan into the connector's :class:`Authenticator` once sessions exist.
"""

from __future__ import annotations

from proxy.auth.base import Authenticator
from proxy.auth.static import FixedAuthenticator, basic_authenticator, static_authenticator
from proxy.config.auth import BasicAuthConfig, NoneAuthConfig, StaticAuthConfig
from proxy.config.custom import CustomAuthConfig
from proxy.config.models import AuthConfig
from proxy.config.oauth2 import OAuth2AuthConfig, TokenLifecycleConfig
from proxy.consent.links import ConsentLinks, ConsentSite
from proxy.store.base import TokenStore
from proxy.store.records import token_key
from proxy.tokens.custom import CustomGrant
from proxy.tokens.endpoint import TokenSender
from proxy.tokens.grant import Grant
from proxy.tokens.manager import TokenManager
from proxy.tokens.model import Clock, SystemClock
from proxy.tokens.oauth2 import OAuth2Grant
from proxy.tokens.shared import SharedToken

AuthPlan = FixedAuthenticator | Grant


def plan_auth(
    name: str, config: AuthConfig, where: str, site: ConsentSite | None = None
) -> AuthPlan:
    """What the connector's auth needs, made once. Raises ``ValueError`` as
    ``field.path: message`` when material (a signing key) cannot be used; ``where`` is the
    auth block's own path (``connectors.crm.auth``, ``connectors.crm.per_client.billing``).
    ``site``: where this proxy serves the consent of ``authorization_code`` connectors."""
    match config:
        case NoneAuthConfig():
            return FixedAuthenticator(None)
        case StaticAuthConfig():
            return static_authenticator(config)
        case BasicAuthConfig():
            return basic_authenticator(config)
        case OAuth2AuthConfig():
            return _oauth2_grant(name, config, where, site)
        case CustomAuthConfig():
            return CustomGrant(config, name)


def _oauth2_grant(
    name: str, config: OAuth2AuthConfig, where: str, site: ConsentSite | None
) -> OAuth2Grant:
    """The grant, its keys loaded (and a service-account file read) now, once."""
    key = None
    if config.client_auth == "private_key_jwt":
        from proxy.tokens.assertions import load_signing_key  # PyJWT: only when used

        try:
            key = load_signing_key(config)
        except ValueError as exc:
            raise ValueError(f"{where}.private_key: {exc}") from None
    if config.grant == "jwt_bearer":
        from proxy.tokens.jwt_bearer import JwtBearerGrant, plan_assertion

        return JwtBearerGrant(config, name, plan_assertion(config, where), key)
    if config.grant == "token_exchange":
        from proxy.tokens.exchange import ExchangeGrant

        return ExchangeGrant(config, name, key)
    links = None
    if config.grant == "authorization_code" and site is not None:
        links = ConsentLinks(name, site, config.redirect_uri)
    return OAuth2Grant(config, name, key, links)


def open_auth(
    name: str,
    config: AuthConfig,
    plan: AuthPlan,
    send: TokenSender | None,
    clock: Clock | None = None,
    deadline: float | None = None,
    *,
    store: TokenStore | None = None,
) -> Authenticator:
    """The connector's authenticator; ``send`` reaches its token endpoint (required for the
    token-issuing types), one acquisition takes at most ``deadline`` seconds, and ``store``
    (if any) shares its token with other processes and keeps it across restarts."""
    if isinstance(plan, FixedAuthenticator):
        return plan
    assert send is not None and isinstance(config, TokenLifecycleConfig)
    clock = clock or SystemClock()
    shared = None
    if store is not None:
        seed = plan.seed_refresh_token()
        shared = SharedToken(store, token_key(name, config, store.keys), name, seed, clock)
    manager = TokenManager
    if getattr(config, "subject_connector", None) is not None:
        from proxy.tokens.exchange import ExchangeTokenManager

        manager = ExchangeTokenManager  # linked to its subject by the runtime
    return manager(name, config, plan, send, clock=clock, deadline=deadline, shared=shared)
