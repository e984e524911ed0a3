"""Connectors, prepared once: a :class:`ConnectorPlan` holds what needs no event loop (SSL
contexts, the auth plan, the parsed upstream); a :class:`Connector` adds the pooled
sessions and the authenticator, opened by :mod:`proxy.runtime`, which also closes them.
"""

from __future__ import annotations

import functools
import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from proxy.auth.base import Authenticator
from proxy.auth.factory import AuthPlan, open_auth, plan_auth
from proxy.config.models import ConnectorConfig, ServerConfig
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.config.tls import TLSConfig
from proxy.consent.links import ConsentSite
from proxy.egress.deadlines import Deadlines
from proxy.egress.sessions import Egress, egress_options, token_session, upstream_session
from proxy.egress.tls import TLSConfigError, client_ssl_context
from proxy.store.base import TokenStore
from proxy.store.files import FileStore
from proxy.tokens.endpoint import send_token_request
from proxy.tokens.model import Clock


@dataclass(frozen=True, eq=False)
class ConnectorPlan:
    name: str
    config: ConnectorConfig
    auth: AuthPlan
    upstream_tls: ssl.SSLContext | None
    """None for a plain http:// upstream."""
    token_tls: ssl.SSLContext | None
    """The token endpoint's context (``auth.tls``, else ``tls``); None without one."""
    max_body: int
    """The connector's ``max_body``, else the server's."""
    body_timeout: float


def plan_connector(
    name: str, config: ConnectorConfig, server: ServerConfig, site: ConsentSite | None = None
) -> tuple[ConnectorPlan | None, list[str]]:
    """The connector's plan, or None and every problem of its material as ``path: message``."""
    where = f"connectors.{name}"
    problems: list[str] = []
    contexts: dict[str, ssl.SSLContext | None] = {}

    def context(tls: TLSConfig | None, path: str) -> ssl.SSLContext | None:
        """Each profile once: a failure too, so it is reported once."""
        if path not in contexts:
            try:
                contexts[path] = client_ssl_context(tls, path)
            except TLSConfigError as exc:
                problems.append(str(exc))
                contexts[path] = None
        return contexts[path]

    https = URL(config.upstream).scheme == "https"
    upstream_tls = context(config.tls, f"{where}.tls") if https or config.tls else None
    token_tls = None
    if isinstance(config.auth, TokenLifecycleConfig):
        auth_tls = config.auth.tls
        # The same profile as the upstream's is the same context: prepared once.
        token_tls = context(
            auth_tls or config.tls, f"{where}.auth.tls" if auth_tls else f"{where}.tls"
        )
    try:
        auth = plan_auth(name, config.auth, where, site)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        return None, problems
    max_body = server.max_body if config.max_body is None else config.max_body
    plan = ConnectorPlan(
        name,
        config,
        auth,
        upstream_tls if https else None,
        token_tls,
        max_body=int(max_body),
        body_timeout=server.body_timeout,
    )
    return plan, []


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
    max_body: int
    body_timeout: float

    def upstream_url(self, rest: str, query: str | None) -> URL:
        """``origin + base_path + rest [+ ?query]``, sent byte-exact (no re-encoding).

        ``rest`` is a validated raw path: empty or starting with ``/``, free of dot-segments
        and encoded separators, so the result always lies under ``base_path``.
        """
        path = self.base_path + rest or "/"
        url = self.origin + path if query is None else f"{self.origin}{path}?{query}"
        return URL(url, encoded=True)


async def open_connector(
    stack: AsyncExitStack,
    plan: ConnectorPlan,
    deadlines: Deadlines,
    clock: Clock | None = None,
    store: TokenStore | None = None,
) -> Connector:
    """Open the connector's sessions and authenticator; each is closed by ``stack``."""
    config = plan.config
    upstream = URL(config.upstream)
    connect, read = config.timeouts.connect, config.timeouts.read
    proxy = config.http_proxy.get_secret_value() if config.http_proxy else None
    send = None
    if plan.token_tls is not None:
        assert isinstance(config.auth, TokenLifecycleConfig)
        session = token_session(plan.token_tls)
        stack.push_async_callback(session.close)
        # The token endpoint gets the connector's timeouts too, as an overall bound: a
        # provider dripping its answer must not hold every waiting request for ever. No
        # sock_read, here or upstream: its timer can fire on a pooled connection
        # (docs/design.md, "Upstream read timeouts").
        timeout = aiohttp.ClientTimeout(total=connect + read, connect=connect)
        options = egress_options(config.auth.tls or config.tls, proxy)
        send = functools.partial(
            send_token_request, Egress(session, timeout, read, deadlines, options)
        )
    token_store = getattr(config.auth, "token_store", None)
    if token_store is not None and store is not None:  # this connector's own file
        store = FileStore.single(Path(token_store), store.keys)
    authenticator = open_auth(
        plan.name, config.auth, plan.auth, send, clock, connect + read, store=store
    )
    stack.push_async_callback(authenticator.close)  # before the session it uses is closed
    session = upstream_session(plan.upstream_tls)
    stack.push_async_callback(session.close)
    return Connector(
        name=plan.name,
        config=config,
        authenticator=authenticator,
        upstream=Egress(
            session,
            aiohttp.ClientTimeout(total=None, connect=connect),  # reads: see read_deadline
            read,
            deadlines,
            egress_options(config.tls, proxy),
            uses_tls=plan.upstream_tls is not None,
        ),
        origin=str(upstream.origin()),
        base_path=upstream.raw_path.rstrip("/"),
        max_body=plan.max_body,
        body_timeout=plan.body_timeout,
    )
