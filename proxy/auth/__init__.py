"""Connector authentication: the :class:`~proxy.auth.base.Authenticator` protocol, the fixed
credential types, and :func:`~proxy.auth.factory.build_authenticator`."""
