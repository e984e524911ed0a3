"""Connectors, prepared once: a :class:`ConnectorPlan` holds what needs no event loop (SSL
contexts, the auth plan, the parsed upstream); a :class:`Connector` adds the pooled
sessions and the authenticator, opened by :mod:`proxy.runtime`, which also closes them.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from proxy.auth.base import Authenticator
from proxy.auth.factory import AuthPlan, open_auth, plan_auth
from proxy.auth.static import NoCredentials
from proxy.config.models import AuthConfig, ConnectorConfig, ServerConfig
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.config.per_client import token_owner
from proxy.config.tls import TLSConfig
from proxy.consent.links import ConsentSite
from proxy.egress.deadlines import Deadlines
from proxy.egress.retries import UpstreamRetries
from proxy.egress.sessions import (
    Egress,
    egress_options,
    token_session,
    upstream_client,
    upstream_session,
)
from proxy.egress.tls import TLSConfigError, client_ssl_context
from proxy.store.base import TokenStore
from proxy.store.files import FileStore
from proxy.tokens.endpoint import send_token_request
from proxy.tokens.model import Clock, SystemClock


@dataclass(frozen=True, eq=False)
class ConnectorPlan:
    name: str
    config: ConnectorConfig
    auth: AuthPlan | None
    """None: no auth of its own (clients without a ``per_client`` entry get 403)."""
    clients: Mapping[str, AuthPlan]
    """The ``per_client`` entries' plans, by client name."""
    upstream_tls: ssl.SSLContext | None
    """None for a plain http:// upstream."""
    token_tls: Mapping[str | None, ssl.SSLContext]
    """The token endpoint's context (``auth.tls``, else ``tls``) of each token-issuing auth
    (None: the connector's own, else the client's); no entry for fixed credentials."""
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
    token_tls: dict[str | None, ssl.SSLContext] = {}
    plans: dict[str | None, AuthPlan] = {}
    for client, path, auth in config.auth_blocks(where):
        if isinstance(auth, TokenLifecycleConfig):
            # The same profile as the upstream's is the same context: prepared once.
            found = context(auth.tls or config.tls, f"{path}.tls" if auth.tls else f"{where}.tls")
            if found is not None:  # else its problem is listed
                token_tls[client] = found
        try:
            plans[client] = plan_auth(token_owner(name, client), auth, path, site)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        return None, problems
    max_body = server.max_body if config.max_body is None else config.max_body
    plan = ConnectorPlan(
        name,
        config,
        plans.pop(None, None),
        plans,  # type: ignore[arg-type]  # only client names are left
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
    """The connector's own credential (:class:`NoCredentials` when it has none)."""
    clients: Mapping[str, Authenticator]
    """The ``per_client`` credentials, by client name."""
    upstream: Egress
    retries: UpstreamRetries
    origin: str
    """``scheme://host[:port]`` of the upstream, exactly as configured."""
    base_path: str
    """The upstream's raw base path without its trailing slash (``""`` for the root)."""
    max_body: int
    body_timeout: float

    def authenticator_for(self, client: str | None) -> Authenticator:
        """The credential of a request from ``client``: its own, else the connector's."""
        if client is None or not self.clients:
            return self.authenticator
        return self.clients.get(client, self.authenticator)

    def authenticators(self) -> dict[str | None, Authenticator]:
        """Every credential of the connector: its own (None), then each client's."""
        return {None: self.authenticator} | dict(self.clients)

    def upstream_target(self, rest: str, query: str | None) -> str:
        """``base_path + rest [+ ?query]``, the raw request target, sent byte-exact.

        ``rest`` is a validated raw path: empty or starting with ``/``, free of dot-segments
        and encoded separators, so the result always lies under ``base_path``.
        """
        path = self.base_path + rest or "/"
        return path if query is None else f"{path}?{query}"

    def upstream_url(self, rest: str, query: str | None) -> URL:
        """``origin`` + :meth:`upstream_target`, for aiohttp (no re-encoding)."""
        return URL(self.origin + self.upstream_target(rest, query), encoded=True)


async def open_connector(
    stack: AsyncExitStack,
    plan: ConnectorPlan,
    deadlines: Deadlines,
    clock: Clock | None = None,
    store: TokenStore | None = None,
) -> Connector:
    """Open the connector's sessions and authenticators; each is closed by ``stack``."""
    config = plan.config
    upstream = URL(config.upstream)
    connect, read = config.timeouts.connect, config.timeouts.read
    proxy = config.http_proxy.get_secret_value() if config.http_proxy else None
    token_egress: dict[int, Egress] = {}  # one token session per TLS profile

    def open_one(client: str | None, auth: AuthConfig, auth_plan: AuthPlan) -> Authenticator:
        send = None
        if client in plan.token_tls:
            assert isinstance(auth, TokenLifecycleConfig)
            context = plan.token_tls[client]
            egress = token_egress.get(id(context))
            if egress is None:
                session = token_session(context)
                stack.push_async_callback(session.close)
                # The token endpoint gets the connector's timeouts too, as an overall
                # bound: a provider dripping its answer must not hold every waiting request
                # for ever. No sock_read, here or upstream: its timer can fire on a pooled
                # connection (docs/design.md, "Upstream read timeouts").
                timeout = aiohttp.ClientTimeout(total=connect + read, connect=connect)
                options = egress_options(auth.tls or config.tls, proxy)
                egress = token_egress[id(context)] = Egress(
                    session, timeout, read, deadlines, options
                )
            send = functools.partial(send_token_request, egress)
        kept = store
        token_store = getattr(auth, "token_store", None)
        if token_store is not None and store is not None:  # this connector's own file
            kept = FileStore.single(Path(token_store), store.keys)
        owner = token_owner(plan.name, client)
        authenticator = open_auth(owner, auth, auth_plan, send, clock, connect + read, store=kept)
        stack.push_async_callback(authenticator.close)  # before the session it uses is closed
        return authenticator

    own: Authenticator = NoCredentials(plan.name)
    if config.auth is not None and plan.auth is not None:
        own = open_one(None, config.auth, plan.auth)
    clients = {
        client: open_one(client, config.per_client[client], auth_plan)
        for client, auth_plan in plan.clients.items()
    }
    session, http1 = None, None
    if proxy is None:
        http1 = upstream_client(upstream, plan.upstream_tls, config.tls, connect)
        stack.push_async_callback(http1.close)
    else:
        session = upstream_session(plan.upstream_tls)
        stack.push_async_callback(session.close)
    return Connector(
        name=plan.name,
        config=config,
        authenticator=own,
        clients=clients,
        upstream=Egress(
            session,
            aiohttp.ClientTimeout(total=None, connect=connect),  # reads: see read_deadline
            read,
            deadlines,
            egress_options(config.tls, proxy),
            uses_tls=plan.upstream_tls is not None,
            http1=http1,
        ),
        retries=UpstreamRetries.of(config.retries, clock or SystemClock()),
        origin=str(upstream.origin()),
        base_path=upstream.raw_path.rstrip("/"),
        max_body=plan.max_body,
        body_timeout=plan.body_timeout,
    )
