"""How requests leave the proxy: one pooled session per TLS profile, with its options.

The SSL contexts come prepared from the build step (:mod:`proxy.runtime`), which also owns
the sessions and closes them.

Each connector has one :class:`Egress` for its upstream and one for its token endpoint, so
connections with different TLS identities, SNI or proxies are never pooled together, and a
slow token endpoint never starves the upstream pool.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.config.tls import TLSConfig
from proxy.egress.deadlines import DeadlineRequest, Deadlines, ReadDeadline

# aiohttp adds these when absent; a transparent proxy must send only what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True)
class Egress:
    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    read_timeout: float
    """The answer must start within this many seconds of the last request bytes sent."""
    deadlines: Deadlines
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    """Per-request keyword arguments: ``server_hostname``, ``proxy`` (it may hold a password)."""
    uses_tls: bool = False
    """The upstream speaks https (token endpoints may differ per request: see the URL)."""

    def read_deadline(self) -> ReadDeadline:
        """A deadline for the answer of one request (``async with``)."""
        return self.deadlines.deadline(self.read_timeout)


def egress_options(tls: TLSConfig | None, proxy: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if tls is not None and tls.server_name:
        options["server_hostname"] = tls.server_name
    if proxy is not None:
        options["proxy"] = proxy
    return options


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
