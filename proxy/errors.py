"""Errors the proxy answers with itself, one class per row of the README's error table.

::

    ProxyError                         500 internal_error
    ├── BadRequestError                400 bad_request
    ├── ForbiddenError                 403 forbidden
    ├── MisdirectedRequestError        421 misdirected_request
    ├── AdminUnauthorizedError         401 unauthorized
    ├── RequestTimeoutError            408 request_timeout
    ├── BodyTooLargeError              413 body_too_large
    ├── HeadersTooLargeError           431 headers_too_large
    ├── RouteNotFoundError             404 no_route
    ├── MethodNotAllowedError          405 method_not_allowed
    │   └── ConnectNotSupportedError   405 connect_not_supported
    ├── UpstreamError                  502 upstream_unreachable
    │   ├── UpstreamTLSError           502 upstream_tls_error
    │   └── UpstreamTimeoutError       504 upstream_timeout   (also a TimeoutError)
    ├── TokenEndpointError             502 token_endpoint_error
    │   └── TokenEndpointTimeoutError  504 token_endpoint_timeout   (also a TimeoutError)
    └── TokenUnavailableError          503 token_unavailable (with Retry-After)

    ConfigError(ValueError)            start-up only: every problem, each with its field path

Each class carries its HTTP ``status``, its contract ``code`` and its RFC 9209
``Proxy-Status`` error type as class attributes. ``message`` is shown to clients, so it
must never hold a secret, a token, an identity provider's words or an upstream query string.
"""

from __future__ import annotations

from collections.abc import Sequence


class ProxyError(Exception):
    """An error the proxy answers itself, with a JSON body and a ``Proxy-Status`` header."""

    status = 500
    code = "internal_error"
    proxy_status = "proxy_internal_error"
    details: str | None = None
    """RFC 9209 ``details``: which hop failed (``token endpoint``), never a secret."""
    close_connection = False
    """True when the connection must not serve another request after this answer."""
    linger = True
    """False: close at once after the answer, without reading what the client may still
    send (aiohttp would otherwise read an unfinished body for up to 10 s)."""

    def __init__(
        self,
        message: str,
        *,
        connector: str | None = None,
        headers: dict[str, str] | None = None,
        proxy_status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.connector = connector
        self.headers = headers or {}
        if proxy_status is not None:
            self.proxy_status = proxy_status  # the closest type (proxy.egress.failures), if known


class BadRequestError(ProxyError):
    status = 400
    code = "bad_request"
    proxy_status = "http_request_error"
    close_connection = True  # the client may be out of step with us (nginx closes too)


class ForbiddenError(ProxyError):
    status = 403
    code = "forbidden"
    proxy_status = "http_request_denied"


class MisdirectedRequestError(ProxyError):
    """``Host`` names nothing this proxy serves: a DNS-rebinding page, most likely."""

    status = 421
    code = "misdirected_request"
    proxy_status = "http_request_denied"
    close_connection = True


class AdminUnauthorizedError(ProxyError):
    status = 401
    code = "unauthorized"
    proxy_status = "http_request_denied"


class RequestTimeoutError(ProxyError):
    """The client stopped sending its request body (``server.body_timeout``)."""

    status = 408
    code = "request_timeout"
    proxy_status = "http_request_error"
    close_connection = True  # the rest of the body may still come: the stream is unusable
    linger = False  # the client went quiet: holding its connection helps nobody


class BodyTooLargeError(ProxyError):
    status = 413
    code = "body_too_large"
    proxy_status = "http_request_error"
    close_connection = True


class HeadersTooLargeError(ProxyError):
    status = 431
    code = "headers_too_large"
    proxy_status = "http_request_error"
    close_connection = True


class RouteNotFoundError(ProxyError):
    status = 404
    code = "no_route"
    proxy_status = "destination_not_found"


class MethodNotAllowedError(ProxyError):
    status = 405
    code = "method_not_allowed"
    proxy_status = "http_request_denied"


class ConnectNotSupportedError(MethodNotAllowedError):
    code = "connect_not_supported"
    close_connection = True  # a client would go on with TLS bytes, not HTTP


class UpstreamError(ProxyError):
    status = 502
    code = "upstream_unreachable"
    proxy_status = "destination_unavailable"
    worth_another_try = False
    """The connection failed before any byte of an answer, and not in TLS: an idempotent
    request may be sent again (:mod:`proxy.egress.retries`)."""


class UpstreamTLSError(UpstreamError):
    code = "upstream_tls_error"
    proxy_status = "tls_certificate_error"


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    status = 504
    code = "upstream_timeout"
    proxy_status = "connection_timeout"


class TokenEndpointError(ProxyError):
    """No token could be had from the identity provider.

    ``retryable`` says whether trying again at once may help (transport errors, 5xx, 429);
    ``retry_after`` is the provider's own ``Retry-After``; ``oauth_error`` the RFC 6749 §5.2
    error code it answered with, if any (never its ``error_description``).
    """

    status = 502
    code = "token_endpoint_error"
    proxy_status = "http_protocol_error"
    details = "token endpoint"

    def __init__(
        self,
        message: str,
        *,
        connector: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        oauth_error: str | None = None,
        proxy_status: str | None = None,
    ) -> None:
        super().__init__(message, connector=connector, proxy_status=proxy_status)
        self.retryable = retryable
        self.retry_after = retry_after
        self.oauth_error = oauth_error


class TokenEndpointTimeoutError(TokenEndpointError, TimeoutError):
    status = 504
    code = "token_endpoint_timeout"
    proxy_status = "http_response_timeout"


class AuthorizationNeededError(TokenEndpointError):
    """A connector whose grant a person must authorize once has no refresh token (yet, or
    since the provider revoked it): the operator is told how, the provider is not asked."""

    status = 503
    code = "token_unavailable"
    proxy_status = "destination_unavailable"
    details = "connector not authorized"


class TokenUnavailableError(ProxyError):
    """The token endpoint is in back-off after failures: answered at once, never queued."""

    status = 503
    code = "token_unavailable"
    proxy_status = "destination_unavailable"
    details = "token endpoint failing, in back-off"

    def __init__(self, message: str, *, retry_after: int, connector: str | None = None) -> None:
        super().__init__(message, connector=connector, headers={"Retry-After": str(retry_after)})


class ConfigError(ValueError):
    """The configuration cannot be used. ``problems`` lists every one as ``path: message``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))
