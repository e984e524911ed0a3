"""The build step: validated settings in, the running proxy's objects out, in two phases.

1. :func:`prepare` (no event loop, no network): SSL contexts, signing keys, grants and
   fixed credentials, for every connector. Every problem of the material a config names
   (an unreadable CA file, a key that does not fit its algorithm) is collected and raised
   as one :class:`~proxy.errors.ConfigError`, each as ``field.path: message``.
2. :func:`open_runtime`: the sessions, authenticators and route table, inside an
   ``AsyncExitStack``, so whatever was opened is closed on exit or when a later step fails.

``tokenproxy check`` runs both and closes at once; ``run`` keeps the runtime until it stops.
With ``--workers N`` the parent prepares once and each worker opens its own sessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.config.models import Settings
from proxy.config.per_client import token_owner
from proxy.connectors import (
    Connector,
    ConnectorPlan,
    open_connector,
    plan_connector,
)
from proxy.consent.links import ConsentSite
from proxy.egress.deadlines import Deadlines
from proxy.errors import ConfigError
from proxy.http.routing import Match, RouteTable
from proxy.http.target import Target
from proxy.metrics.workers import WorkerSnapshots
from proxy.store.base import TokenStore
from proxy.store.factory import open_store, store_problems
from proxy.tokens.model import Clock

if TYPE_CHECKING:
    from proxy.http.intercept import LeafIssuer


@dataclass(frozen=True)
class Plan:
    settings: Settings
    connectors: Mapping[str, ConnectorPlan]
    site: ConsentSite
    """Where browsers reach this proxy's consent endpoints (told the bound port)."""
    intercept: LeafIssuer | None = None
    """With ``tls_intercept``: the local CA's certificates for CONNECT host:443."""

    @property
    def needs_store(self) -> bool:
        return any(c.token_tls for c in self.connectors.values())


def prepare(settings: Settings) -> Plan:
    """Phase 1; raises ``ConfigError`` listing every problem at once."""
    plans: dict[str, ConnectorPlan] = {}
    problems: list[str] = []
    site = ConsentSite(settings)
    for name, config in settings.connectors.items():
        plan, found = plan_connector(name, config, settings.server, site)
        problems.extend(found)
        if plan is not None:
            plans[name] = plan
    problems.extend(store_problems(settings))
    intercept = None
    if settings.tls_intercept is not None:
        try:
            intercept = _leaf_issuer(settings)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    return Plan(settings, plans, site, intercept)


def _leaf_issuer(settings: Settings) -> LeafIssuer:
    from proxy.http.intercept import LeafIssuer  # cryptography's x509: only when used
    from proxy.secrets.envelope import MasterKeys
    from proxy.store.factory import store_keys

    assert settings.tls_intercept is not None
    config = settings.tls_intercept
    state = settings.state_dir
    try:
        if state:
            Path(state).mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = store_keys(Path(state)) if state else MasterKeys.from_environment()
    except (OSError, ValueError) as exc:  # EnvelopeError is a ValueError
        raise ValueError(f"tls_intercept: no master key to unseal the CA key ({exc})") from None
    return LeafIssuer(config.ca_cert_file, config.ca_key_file, keys)


class Runtime:
    """The connectors of a running proxy and their route table."""

    def __init__(
        self,
        settings: Settings,
        connectors: Mapping[str, Connector],
        store: TokenStore | None = None,
        site: ConsentSite | None = None,
    ) -> None:
        self.settings = settings
        self.connectors = connectors
        self.store = store
        self.site = site or ConsentSite(settings)
        self.snapshots: WorkerSnapshots | None = None
        """With ``--workers``: the other workers' metrics (set by the server)."""
        self.intercept: LeafIssuer | None = None
        """The local CA's leaf certificates (``tls_intercept``), set by :func:`open_runtime`."""
        self.draining = False
        """Stopping: ``/ready`` answers 503 so that load balancers stop sending."""
        self._table: RouteTable[Connector] = RouteTable(
            routes=[(c.config.route, c) for c in connectors.values() if c.config.route is not None],
            hosts=[(host, c) for c in connectors.values() for host in c.config.hosts],
        )

    def token_states(self) -> dict[str, dict[str, Any]]:
        """``describe()`` of every credential, by owner (``crm``, ``crm/billing``)."""
        return {
            token_owner(connector.name, client): authenticator.describe()
            for connector in self.connectors.values()
            for client, authenticator in connector.authenticators().items()
        }

    def route(self, target: Target, host_header: str | None) -> Match[Connector] | None:
        """Absolute-form targets match by their authority only; others by Host, then by path."""
        if target.authority is not None:
            return self._table.match_host(target.authority, target.path)
        return self._table.match_host(host_header, target.path) or self._table.match_path(
            target.path
        )


@asynccontextmanager
async def open_runtime(plan: Plan, clock: Clock | None = None) -> AsyncIterator[Runtime]:
    """Phase 2, inside the event loop. Everything opened is closed on exit, in reverse."""
    async with AsyncExitStack() as stack:
        deadlines = Deadlines()
        stack.push_async_callback(deadlines.close)  # last: after every session is closed
        # Only token connectors keep state: no key file or directory for the others.
        store = open_store(plan.settings) if plan.needs_store else None
        if store is not None:
            stack.push_async_callback(store.close)  # after every connector that uses it
        connectors = {
            name: await open_connector(stack, connector, deadlines, clock, store)
            for name, connector in plan.connectors.items()
        }
        link_subjects(connectors)
        runtime = Runtime(plan.settings, connectors, store, plan.site)
        runtime.intercept = plan.intercept
        yield runtime


def link_subjects(connectors: Mapping[str, Connector]) -> None:
    """Give each ``token_exchange`` credential its ``subject_connector``'s authenticator,
    once all are open, so the order of connectors never matters. The config checks made
    sure that each names another token-issuing connector, without cycles."""
    from proxy.tokens.exchange import ExchangeGrant
    from proxy.tokens.manager import TokenManager

    for connector in connectors.values():
        for authenticator in connector.authenticators().values():
            grant = getattr(authenticator, "grant", None)
            if isinstance(grant, ExchangeGrant) and grant.config.subject_connector is not None:
                subject = connectors[grant.config.subject_connector].authenticator
                assert isinstance(subject, TokenManager), "checked: it issues tokens"
                grant.link(subject)
