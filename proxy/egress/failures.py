"""The one table from aiohttp's client exceptions to what the proxy says about them.

Both peers the proxy talks to, the upstream and a token endpoint, fail the same ways; each
way has one RFC 9209 ``Proxy-Status`` error type and one wording, with the peer's name put
in. Nothing here reads ``str()`` of an aiohttp exception: it can hold the full URL with its
query, and ``request_info`` holds the injected credential.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import aiohttp

from proxy.egress.tls import REJECTED_CLIENT_CERT_HINT, tls_failure


class InvalidAnswer(aiohttp.ClientError):
    """The upstream's bytes are no HTTP/1.1 answer (:mod:`proxy.egress.http1`'s word for
    aiohttp's ``ClientResponseError``, which needs a request to describe)."""


@dataclass(frozen=True)
class Failure:
    kind: str
    """``connect_timeout``, ``timeout``, ``tls``, ``connect`` or ``broken``."""
    proxy_status: str
    message: str
    nothing_sent: bool
    """The request never left: trying again is always safe."""
    unanswered: bool = False
    """The request left, but the connection failed before any byte of an answer."""

    @property
    def worth_another_try(self) -> bool:
        """An idempotent request may be sent again (it may have run once already, which is
        what idempotent allows); never after a TLS failure, which another try repeats."""
        return self.kind != "tls" and (self.nothing_sent or self.unanswered)


def classify(exc: aiohttp.ClientError | TimeoutError, peer: str, *, tls: bool) -> Failure:
    """What went wrong talking to ``peer`` (``the upstream``, ``the token endpoint``); the
    most specific case first: a connect timeout is also a connector error, a certificate
    error is also a connection error, and ``ClientTimeout(total=...)`` raises the builtin."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Failure(
            "connect_timeout", "connection_timeout", f"timed out connecting to {peer}", True
        )
    if isinstance(exc, TimeoutError):
        return Failure("timeout", "http_response_timeout", f"timed out waiting for {peer}", False)
    detail = tls_failure(exc)
    if detail is not None:
        status = "tls_certificate_error" if "certificate" in detail else "tls_protocol_error"
        return Failure("tls", status, f"TLS with {peer} failed: {detail}", True)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Failure("connect", "dns_error", f"cannot connect to {peer}", True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = exc.os_error.errno == errno.ECONNREFUSED
        status = "connection_refused" if refused else "destination_unavailable"
        return Failure("connect", status, f"cannot connect to {peer}", True)
    if isinstance(exc, aiohttp.ClientResponseError | InvalidAnswer):
        return Failure("broken", "http_protocol_error", f"{peer} sent an invalid response", False)
    message = f"{peer} closed the connection without answering"
    if tls and isinstance(exc, aiohttp.ServerDisconnectedError):
        message += f" ({REJECTED_CLIENT_CERT_HINT})"
    unanswered = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
    return Failure("broken", "http_response_incomplete", message, False, unanswered)
