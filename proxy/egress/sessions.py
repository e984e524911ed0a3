"""How requests leave the proxy: one pool per TLS profile, with its options.

The SSL contexts come prepared from the build step (:mod:`proxy.runtime`), which also owns
the pools and closes them.

Each connector has one :class:`Egress` for its upstream and one for its token endpoint, so
connections with different TLS identities, SNI or proxies are never pooled together, and a
slow token endpoint never starves the upstream pool. An upstream is reached by the lean
client of :mod:`proxy.egress.http1` (:func:`upstream_client`), unless its connector goes
through an egress proxy (``http_proxy``): then by an aiohttp session, as token endpoints are.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from proxy.config.tls import TLSConfig
from proxy.egress.deadlines import DeadlineRequest, Deadlines, ReadDeadline
from proxy.egress.http1.client import Http1Client
from proxy.egress.http1.pool import UpstreamPool

# aiohttp adds these when absent; a transparent proxy must send only what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True)
class Egress:
    session: aiohttp.ClientSession | None
    """None when :attr:`http1` carries the requests."""
    timeout: aiohttp.ClientTimeout
    read_timeout: float
    """The answer must start within this many seconds of the last request bytes sent."""
    deadlines: Deadlines
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    """Per-request keyword arguments: ``server_hostname``, ``proxy`` (it may hold a password)."""
    uses_tls: bool = False
    """The upstream speaks https (token endpoints may differ per request: see the URL)."""
    http1: Http1Client | None = None
    """The lean client of an upstream reached directly."""

    @property
    def closed(self) -> bool:
        return self.http1.pool.closed if self.http1 is not None else self._session().closed

    @property
    def in_use(self) -> int:
        """Connections carrying a request now."""
        if self.http1 is not None:
            return self.http1.pool.in_use
        connector = self._session().connector
        return 0 if connector is None else len(connector._acquired)  # no public count

    def _session(self) -> aiohttp.ClientSession:
        assert self.session is not None  # one of the two is always set
        return self.session

    def read_deadline(self) -> ReadDeadline:
        """A deadline for the answer of one request (``with`` it, in the request's task)."""
        return self.deadlines.deadline(self.read_timeout)


def egress_options(tls: TLSConfig | None, proxy: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if tls is not None and tls.server_name:
        options["server_hostname"] = tls.server_name
    if proxy is not None:
        options["proxy"] = proxy
    return options


def upstream_client(
    upstream: URL, context: ssl.SSLContext | None, tls: TLSConfig | None, connect: float | None
) -> Http1Client:
    """The lean client of ``upstream`` (``context`` None for plain http), which alters
    nothing it relays, as :func:`upstream_session` promises."""
    assert upstream.raw_host is not None and upstream.port is not None  # checked at load
    server_name = tls.server_name if tls is not None else None
    pool = UpstreamPool(upstream.raw_host, upstream.port, context, server_name, connect)
    return Http1Client(pool, upstream.host_port_subcomponent or upstream.raw_host)


def upstream_session(context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """A session that alters nothing it relays; ``context`` is None for plain http.

    No decompression (bodies pass byte-exact, no inflate bomb), no cookie jar (cookies belong
    to the client), no proxy from the environment (``HTTP_PROXY`` is usually set for the
    legacy client and points at us), no automatic headers, and no silent second send:
    aiohttp sends an idempotent request again after a dropped connection, unseen by the
    retry rules that must count every send (:mod:`proxy.egress.retries`).
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, ssl=True if context is None else context),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        request_class=DeadlineRequest,
    )
    session._retry_connection = False  # no public switch (aiohttp 3.14); see docs/design.md
    return session


def token_session(context: ssl.SSLContext) -> aiohttp.ClientSession:
    """The token endpoint's own small pool; answers may be compressed (read with a cap)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=10, ssl=context),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": "tokenproxy", "Accept": "application/json"},
        request_class=DeadlineRequest,
    )
