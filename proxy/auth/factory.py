"""The only place that dispatches on the ``auth.type`` of a connector's config."""

from __future__ import annotations

from proxy.auth.base import Authenticator
from proxy.auth.static import FixedAuthenticator, basic_authenticator, static_authenticator
from proxy.config.auth import BasicAuthConfig, NoneAuthConfig, StaticAuthConfig
from proxy.config.custom import CustomAuthConfig
from proxy.config.models import AuthConfig
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.egress import Egress
from proxy.tokens.custom import CustomGrant
from proxy.tokens.grant import Grant
from proxy.tokens.manager import TokenManager
from proxy.tokens.model import Clock
from proxy.tokens.oauth2 import OAuth2Grant


def build_authenticator(
    name: str, config: AuthConfig, token: Egress | None, clock: Clock | None = None
) -> Authenticator:
    """The connector's authenticator; ``token`` is how it reaches its token endpoint
    (required for the types that have one)."""
    match config:
        case NoneAuthConfig():
            return FixedAuthenticator(None)
        case StaticAuthConfig():
            return static_authenticator(config)
        case BasicAuthConfig():
            return basic_authenticator(config)
        case OAuth2AuthConfig():
            grant: Grant = OAuth2Grant(config, name)
        case CustomAuthConfig():
            grant = CustomGrant(config, name)
    assert token is not None, "token-issuing auth types need a token egress"
    return TokenManager(name, config, grant, token, clock=clock)
