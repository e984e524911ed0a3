"""The browser side of the authorization-code flow: ``GET {admin.prefix}/oauth/{name}/start``
and ``.../callback``.

- **start** discovers the provider if it must, begins a :class:`~proxy.consent.flow.Pending`
  authorization, seals it with the master key into a cookie scoped to the connector's
  callback path (``HttpOnly``; ``SameSite=Lax``, so it comes back on the provider's
  top-level redirect; ``Secure`` behind an https ``redirect_uri``; 10 minutes), and
  redirects the browser to the provider. Sealed, the cookie binds the authorization to the
  browser that started it (RFC 9700 §4.7.1) and lets any worker or replica that shares the
  master key take the callback; nothing is kept on the server until then.
- **callback** unseals the cookie, checks the answer against it, spends its ``state`` once
  in the token store (a replay is refused anywhere in the fleet), redeems the code, installs
  the tokens (persisted before use) and says who authorized. Every failure shows a page and
  changes nothing; the cookie is cleared either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from typing import Any

import orjson
from aiohttp import hdrs, web
from yarl import URL

from proxy.connectors import Connector
from proxy.consent.flow import (
    STATE_LIFETIME,
    ConsentError,
    Pending,
    authorization_url,
    code_from_callback,
    redeem,
)
from proxy.consent.links import ConsentLinks
from proxy.consent.pages import PAGE_HEADERS, authorized_page, failed_page
from proxy.errors import ProxyError, RouteNotFoundError, TokenEndpointError
from proxy.logs import facts_key
from proxy.runtime import Runtime
from proxy.secrets.envelope import EnvelopeError
from proxy.store.base import TokenStore
from proxy.tokens.manager import TokenManager
from proxy.tokens.model import Authorized
from proxy.tokens.oauth2 import OAuth2Grant

CONSENT_PATH = re.compile(r"/oauth/([A-Za-z0-9_-]+)/(start|callback)")
COOKIE_PREFIX = "tokenproxy_consent_"
_PURPOSE = "consent"


class ConsentEndpoints:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._redeeming: set[asyncio.Future[Authorized]] = set()

    async def handle(self, request: web.BaseRequest, name: str, step: str) -> web.StreamResponse:
        connector = self._runtime.connectors.get(name)
        manager = connector.authenticator if connector is not None else None
        links = getattr(manager.grant, "links", None) if isinstance(manager, TokenManager) else None
        if not isinstance(manager, TokenManager) or not isinstance(links, ConsentLinks):
            raise RouteNotFoundError(f"no connector {name!r} with grant authorization_code")
        store = self._runtime.store
        if store is None:
            raise ProxyError("the authorization-code flow needs a token store (state_dir)")
        assert connector is not None
        request[facts_key].connector = connector.name
        if step == "start":
            return await self._start(request, connector, manager, links, store)
        return await self._callback(request, connector, manager, links, store)

    async def _start(
        self,
        request: web.BaseRequest,
        connector: Connector,
        manager: TokenManager,
        links: ConsentLinks,
        store: TokenStore,
    ) -> web.StreamResponse:
        callback = URL(links.redirect_uri)
        if links.configured_redirect_uri is None and not _same_host(request, callback):
            # The cookie set here must come back with the callback: start again on the
            # callback's own origin (localhost vs 127.0.0.1, say).
            again = URL(links.start_url).with_query(request.query)
            return web.Response(status=302, headers={hdrs.LOCATION: str(again), **PAGE_HEADERS})
        grant = await manager.prepare()
        assert isinstance(grant, OAuth2Grant)
        now = manager.clock.wall()
        pending = Pending.begin(connector.name, links.redirect_uri, grant.config.pkce, now)
        location = authorization_url(grant, pending, {k: request.query[k] for k in request.query})
        response = web.Response(status=302, headers={hdrs.LOCATION: location, **PAGE_HEADERS})
        sealed = store.keys.encrypt(
            orjson.dumps({"p": _PURPOSE, **dataclasses.asdict(pending)}).decode()
        )
        response.set_cookie(
            COOKIE_PREFIX + connector.name,
            sealed,
            max_age=int(STATE_LIFETIME),
            path=_cookie_path(links),
            httponly=True,
            samesite="Lax",
            secure=callback.scheme == "https",
        )
        return response

    async def _callback(
        self,
        request: web.BaseRequest,
        connector: Connector,
        manager: TokenManager,
        links: ConsentLinks,
        store: TokenStore,
    ) -> web.StreamResponse:
        name = connector.name
        failed = functools.partial(failed_page, name, start_url=links.start_url)
        pending = _unseal(request.cookies.get(COOKIE_PREFIX + name), name, store)
        spent = False  # the cookie goes once it answered: an unrelated request cannot end it
        try:
            if pending is None:
                raise ConsentError(
                    "this browser did not start this authorization, or it expired (it "
                    "lasts 10 minutes); if `tokenproxy authorize` waits in a terminal, "
                    "paste this page's address there"
                )
            if pending.expired(manager.clock.wall()):
                spent = True
                raise ConsentError("the authorization expired (it lasts 10 minutes)")
            grant = await manager.prepare()
            assert isinstance(grant, OAuth2Grant)
            try:
                code = code_from_callback(_single_values(request), pending, grant)
            except ConsentError as exc:
                spent = exc.refused  # the state matched: this authorization is over
                raise
            spent = True
            if not await _claim(store, pending):
                raise ConsentError("this answer was used already (a replayed callback)")
            # The code is spent now: a browser that goes away must not lose its tokens.
            task = asyncio.ensure_future(
                manager.authorize(functools.partial(redeem, code=code, pending=pending))
            )
            self._redeeming.add(task)
            task.add_done_callback(self._redeeming.discard)
            authorized = await asyncio.shield(task)
            response = authorized_page(
                name, authorized.account, authorized.refresh_token is not None
            )
        except ConsentError as exc:
            response = failed(exc.message, status=400)
        except TokenEndpointError as exc:
            response = failed(exc.message, status=502)
        if spent:
            response.del_cookie(COOKIE_PREFIX + name, path=_cookie_path(links))
        return response


def _single_values(request: web.BaseRequest) -> dict[str, str]:
    """The callback's query; a parameter given twice is refused (which would count?)."""
    query = request.query
    if len(set(query)) != len(query):
        raise ConsentError("the answer repeats a parameter")
    return {key: query[key] for key in query}


async def _claim(store: TokenStore, pending: Pending) -> bool:
    try:
        return await store.claim_once(pending.state_id, STATE_LIFETIME)
    except OSError:
        raise TokenEndpointError("the token store cannot be written") from None


def _same_host(request: web.BaseRequest, url: URL) -> bool:
    """Whether the browser reached us by ``url``'s host and port (default ports omitted)."""
    try:
        seen = URL(f"{url.scheme}://{request.host}")
    except ValueError:
        return False
    return (seen.host or "").lower() == (url.host or "").lower() and seen.port == url.port


def _cookie_path(links: ConsentLinks) -> str:
    """The callback's directory as the browser sees it: start and callback, nothing else."""
    return URL(links.redirect_uri).parent.path


def _unseal(cookie: str | None, connector: str, store: TokenStore) -> Pending | None:
    if not cookie:
        return None
    try:
        data: Any = orjson.loads(store.keys.decrypt(cookie))
        if data.pop("p") != _PURPOSE or data.get("connector") != connector:
            return None
        return Pending(**data)
    except (EnvelopeError, ValueError, TypeError, KeyError, AttributeError):
        return None
