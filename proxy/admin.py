"""Admin endpoints under ``admin.prefix``: health, readiness, connector status, and the
browser authorization of ``authorization_code`` connectors (:mod:`proxy.consent.web`).

Nothing here ever shows a secret: ``/connectors`` describes where a credential goes and of
which type, never its value. When ``admin.token`` is set, every admin request other than
GET/HEAD must carry it as ``Authorization: Bearer <token>`` (compared in constant time; the
scheme in any case). ``clients`` restrictions apply here too (checked by the gateway), except
for ``/health`` and ``/ready`` from loopback.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import hdrs, web
from yarl import URL

from proxy.config.auth import InjectedAuthConfig
from proxy.config.base import SecretStr
from proxy.config.models import AdminConfig, AuthConfig
from proxy.connectors import Connector
from proxy.consent.web import CONSENT_PATH, ConsentEndpoints
from proxy.egress.tls import describe_tls
from proxy.errors import (
    AdminUnauthorizedError,
    MethodNotAllowedError,
    ProxyError,
    RouteNotFoundError,
)
from proxy.logs import facts_key
from proxy.metrics.registry import METRICS, Metrics
from proxy.metrics.state import CONTENT_TYPE, StateOf, connector_state
from proxy.runtime import Runtime
from proxy.status_page import Rates, render_status_page
from proxy.tokens.model import Phase

if TYPE_CHECKING:
    from proxy.http.reload import Reload

Endpoint = Callable[[], Awaitable[web.StreamResponse]]
_REFRESH = re.compile(r"/connectors/([A-Za-z0-9_-]+)/refresh")


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _without_credentials(proxy: SecretStr | None) -> str | None:
    if proxy is None:
        return None
    return str(URL(proxy.get_secret_value()).with_user(None).with_password(None))


def _describe_auth(config: AuthConfig | None) -> dict[str, Any]:
    if config is None:
        return {"type": None}
    auth: dict[str, Any] = {"type": config.type}
    if isinstance(config, InjectedAuthConfig):
        if config.query_param:
            auth["query_param"] = config.query_param
        else:
            auth["header"] = config.header
    return auth


def describe_connector(connector: Connector) -> dict[str, Any]:
    config = connector.config
    clients = {
        client: {"auth": _describe_auth(config.per_client[client]), **auth.describe()}
        for client, auth in connector.clients.items()
    }
    return {
        "name": connector.name,
        "route": None if config.route is None else config.route or "/",
        "hosts": list(config.hosts),
        "upstream": config.upstream,
        "auth": _describe_auth(config.auth),
        "timeouts": dataclasses.asdict(config.timeouts),
        "tls": describe_tls(config.tls),
        **(
            {"token_tls": describe_tls(auth_tls)}
            if (auth_tls := getattr(config.auth, "tls", None))
            else {}
        ),
        "http_proxy": _without_credentials(config.http_proxy),
        "warmup": config.warmup,
        **connector.authenticator.describe(),
        **({"clients": clients} if clients else {}),
    }


class AdminApi:
    def __init__(self, config: AdminConfig, runtime: Runtime, reload: Reload | None = None) -> None:
        """``reload``: what ``POST /reload`` runs (None: not offered)."""
        self._reload = reload
        self.prefix = config.prefix
        self._probes = frozenset({self.prefix + "/health", self.prefix + "/ready"})
        self._token = None if config.token is None else config.token.get_secret_value().encode()
        self._connectors = runtime.connectors
        self._store = runtime.store
        self._consent = ConsentEndpoints(runtime)
        self._runtime = runtime
        self._endpoints: dict[str, Endpoint] = {
            "/health": self._health,
            "/ready": self._ready,
            "/connectors": self._list_connectors,
            "/metrics": self._metrics,
            "": self._status_page,
            "/": self._status_page,
        }
        self._rates = Rates()

    def is_probe(self, raw_path: str) -> bool:
        """``/health`` or ``/ready`` (any query): what orchestrators poll."""
        return raw_path.partition("?")[0] in self._probes

    def is_callback(self, path: str) -> bool:
        """The provider sends the browser here from its own site: a cross-site request by
        design, guarded by the sealed cookie and the state instead."""
        consent = CONSENT_PATH.fullmatch(path[len(self.prefix) :])
        return path.startswith(self.prefix) and consent is not None and consent[2] == "callback"

    def owns(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def handle(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        subpath = path[len(self.prefix) :]
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            self._authorize(request)
            if subpath == "/reload" and request.method == hdrs.METH_POST:
                return await self._reload_config()
            refresh = _REFRESH.fullmatch(subpath)
            if refresh is None or request.method != hdrs.METH_POST:
                raise MethodNotAllowedError(f"{request.method} is not supported here")
            return await self._refresh(request, refresh.group(1))
        consent = CONSENT_PATH.fullmatch(subpath)
        if consent is not None:  # names the connector (logs, metrics) once it is found
            return await self._consent.handle(request, consent.group(1), consent.group(2))
        endpoint = self._endpoints.get(subpath)
        if endpoint is None:
            raise RouteNotFoundError("no such admin endpoint")
        return await endpoint()

    def _authorize(self, request: web.BaseRequest) -> None:
        if self._token is None:
            return
        scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        matched = hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._token)
        if scheme.lower() != "bearer" or not matched:  # RFC 9110 §11.1: any case of scheme
            raise AdminUnauthorizedError("admin token required (Authorization: Bearer <token>)")

    async def _health(self) -> web.StreamResponse:
        return json_response({"status": "ok", "worker": os.getpid()})

    async def _ready(self) -> web.StreamResponse:
        """Ready once every ``warmup`` connector holds a valid token."""
        connectors = self._connectors.values()
        states = {c.name: c.authenticator.describe()["state"] for c in connectors}
        waiting = [
            c.name
            for c in connectors
            if c.config.warmup
            and any(a.phase() is Phase.EXPIRED for a in c.authenticators().values())
        ]
        store = self._describe_store()
        if self._runtime.draining:
            return json_response({"status": "draining", "connectors": states, **store}, status=503)
        if waiting:
            return json_response(
                {"status": "not_ready", "waiting_for": waiting, "connectors": states, **store},
                status=503,
            )
        # A degraded store does not make the proxy unready: it serves from its local copies.
        return json_response({"status": "ready", "connectors": states, **store})

    def _describe_store(self) -> dict[str, Any]:
        if self._store is None:
            return {}
        return {"store": {"backend": self._store.backend, "health": self._store.health()}}

    async def _refresh(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        connector = self._connectors.get(name)
        if connector is None:
            raise RouteNotFoundError(f"no connector named {name!r}")
        request[facts_key].connector = name  # errors and the access log name it
        failure: ProxyError | None = None
        for authenticator in connector.authenticators().values():  # its clients' too
            try:
                await authenticator.refresh()
            except ProxyError as exc:  # one failing credential must not spare the others
                failure = failure or exc
        if failure is not None:
            raise failure
        return json_response(describe_connector(connector))

    def _every_worker(self) -> tuple[Metrics, list[StateOf], tuple[str, bool] | None]:
        """This worker's counters and state, and every other worker's (``--workers``)."""
        state = connector_state(self._runtime.token_states(), time.time())
        store_up = None if self._store is None else self._store.health() == "ok"
        merged, states, reachable = Metrics(), [state], [store_up]
        merged.add(METRICS.dump())
        snapshots = self._runtime.snapshots
        for other in snapshots.others() if snapshots is not None else ():
            merged.add(other.counters)
            if other.state is None:  # a worker that is gone: its gauges went with it
                merged.in_flight -= other.counters.get("in_flight", 0)
            else:
                states.append(other.state)
                reachable.append(other.store_up)
        store = None
        if self._store is not None:
            store = (self._store.backend, all(up is not False for up in reachable))
        return merged, states, store

    async def _metrics(self) -> web.StreamResponse:
        from proxy.metrics.exposition import render  # prometheus-client: at a scrape only

        body = render(*self._every_worker())
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})

    async def _status_page(self) -> web.StreamResponse:
        merged, _, _ = self._every_worker()
        described = {c.name: describe_connector(c) for c in self._connectors.values()}
        store = self._describe_store().get("store")
        return render_status_page(described, store, self._rates.update(merged))

    async def _reload_config(self) -> web.StreamResponse:
        """Like SIGHUP: 200 with what was kept, or 400 with every problem (nothing changed)."""
        if self._reload is None:
            raise RouteNotFoundError("this proxy was not started from a config file")
        outcome = await self._reload()
        status = (202 if outcome.requested else 200) if outcome.ok else 400
        return json_response(outcome.as_json(), status=status)

    async def _list_connectors(self) -> web.StreamResponse:
        return json_response(
            {
                "connectors": [describe_connector(c) for c in self._connectors.values()],
                **self._describe_store(),
            }
        )
