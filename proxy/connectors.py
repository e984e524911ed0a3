"""Runtime connectors: everything a request needs, computed once when the proxy starts.

A :class:`Connector` holds the parsed upstream base, its pooled client session, its timeouts
and its authenticator. :class:`ConnectorSet` owns them all, routes requests to them and
closes them on shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from yarl import URL

from proxy.auth.base import Authenticator
from proxy.auth.factory import build_authenticator
from proxy.config.models import ConnectorConfig, Settings
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.egress import Egress, token_egress, upstream_egress
from proxy.routing import Match, RouteTable
from proxy.target import Target
from proxy.tokens.model import Clock


@dataclass(eq=False)
class Connector:
    name: str
    config: ConnectorConfig
    authenticator: Authenticator
    upstream: Egress
    origin: str
    """``scheme://host[:port]`` of the upstream, exactly as configured."""
    base_path: str
    """The upstream's raw base path without its trailing slash (``""`` for the root)."""

    def upstream_url(self, rest: str, query: str | None) -> URL:
        """``origin + base_path + rest [+ ?query]``, sent byte-exact (no re-encoding).

        ``rest`` is a validated raw path: empty or starting with ``/``, free of dot-segments
        and encoded separators, so the result always lies under ``base_path``.
        """
        path = self.base_path + rest or "/"
        url = self.origin + path if query is None else f"{self.origin}{path}?{query}"
        return URL(url, encoded=True)


def build_connector(name: str, config: ConnectorConfig, clock: Clock | None = None) -> Connector:
    """Raises :class:`~proxy.tls.TLSConfigError` if a TLS profile cannot be loaded."""
    upstream = URL(config.upstream)
    connect, read = config.timeouts.connect, config.timeouts.read
    proxy = config.http_proxy.get_secret_value() if config.http_proxy else None
    where = f"connectors.{name}"
    # The token endpoint gets the connector's timeouts too, and an overall bound: a provider
    # dripping its answer must not hold every waiting request for ever.
    token_timeout = aiohttp.ClientTimeout(total=connect + read, connect=connect, sock_read=read)
    token = None
    if isinstance(config.auth, TokenLifecycleConfig):
        auth_tls = config.auth.tls
        token = token_egress(
            auth_tls or config.tls,
            f"{where}.auth.tls" if auth_tls else f"{where}.tls",
            token_timeout,
            proxy=proxy,
        )
    return Connector(
        name=name,
        config=config,
        authenticator=build_authenticator(name, config.auth, token, clock),
        upstream=upstream_egress(
            config.tls,
            f"{where}.tls",
            aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read),
            https=upstream.scheme == "https",
            proxy=proxy,
        ),
        origin=str(upstream.origin()),
        base_path=upstream.raw_path.rstrip("/"),
    )


class ConnectorSet:
    """All connectors of a config and their route table. Build it inside the event loop."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.connectors = {
            name: build_connector(name, config, clock)
            for name, config in settings.connectors.items()
        }
        self._table: RouteTable[Connector] = RouteTable(
            routes=[
                (c.config.route, c) for c in self.connectors.values() if c.config.route is not None
            ],
            hosts=[(host, c) for c in self.connectors.values() for host in c.config.hosts],
        )

    def route(self, target: Target, host_header: str | None) -> Match[Connector] | None:
        """Absolute-form targets match by their authority only; others by Host, then by path."""
        if target.authority is not None:
            return self._table.match_host(target.authority, target.path)
        return self._table.match_host(host_header, target.path) or self._table.match_path(
            target.path
        )

    async def close(self) -> None:
        for connector in self.connectors.values():
            await connector.upstream.close()
            await connector.authenticator.close()
