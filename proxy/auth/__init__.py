"""Connector authentication: the only place that dispatches on the ``auth.type`` of a config."""

from __future__ import annotations

from proxy.auth.base import Authenticator, Credential
from proxy.auth.static import FixedAuthenticator, basic_authenticator, static_authenticator
from proxy.config.auth import AuthConfig, BasicAuthConfig, NoneAuthConfig, StaticAuthConfig


def build_authenticator(config: AuthConfig) -> Authenticator:
    match config:
        case NoneAuthConfig():
            return FixedAuthenticator(None)
        case StaticAuthConfig():
            return static_authenticator(config)
        case BasicAuthConfig():
            return basic_authenticator(config)


__all__ = ["Authenticator", "Credential", "build_authenticator"]
