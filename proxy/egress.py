"""How requests leave the proxy: one pooled session per TLS profile, with its options.

Each connector has one :class:`Egress` for its upstream and one for its token endpoint, so
connections with different TLS identities, SNI or proxies are never pooled together, and a
slow token endpoint never starves the upstream pool (HARDENING.md C14, C15).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.config.tls import TLSConfig
from proxy.tls import client_ssl_context

# aiohttp adds these when absent; a transparent proxy must send only what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True)
class Egress:
    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    """Per-request keyword arguments: ``server_hostname``, ``proxy`` (it may hold a password)."""
    uses_tls: bool = False
    """The upstream speaks https (token endpoints may differ per request: see the URL)."""

    async def close(self) -> None:
        await self.session.close()


def _options(tls: TLSConfig | None, proxy: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if tls is not None and tls.server_name:
        options["server_hostname"] = tls.server_name
    if proxy is not None:
        options["proxy"] = proxy
    return options


def upstream_egress(
    tls: TLSConfig | None,
    where: str,
    timeout: aiohttp.ClientTimeout,
    *,
    https: bool,
    proxy: str | None,
) -> Egress:
    """A session that alters nothing it relays.

    No decompression (bodies pass byte-exact, no inflate bomb), no cookie jar (cookies belong
    to the client), no proxy from the environment (``HTTP_PROXY`` is usually set for the
    legacy client and points at us), no automatic headers.
    """
    context: ssl.SSLContext | bool = client_ssl_context(tls, where) if https else True
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, ssl=context),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
    )
    return Egress(session, timeout, _options(tls, proxy), uses_tls=https)


def token_egress(
    tls: TLSConfig | None, where: str, timeout: aiohttp.ClientTimeout, *, proxy: str | None
) -> Egress:
    """The token endpoint's own small pool; answers may be compressed (read with a cap)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=10, ssl=client_ssl_context(tls, where)),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": "tokenproxy", "Accept": "application/json"},
    )
    return Egress(session, timeout, _options(tls, proxy))
