"""Requests a browser was tricked into sending: DNS rebinding and cross-site use.

A page on any site, open in a browser on the machine the sidecar runs on, can make that
browser send requests to ``127.0.0.1:8080``, or to a name of its own that it re-points at
127.0.0.1 (DNS rebinding); the proxy would add its credential to them. Two checks stop it:

- ``Host`` must name this proxy: the listen address, ``localhost``, an IP literal (a
  rebinding page cannot make the browser send one for its own name), a connector's
  ``hosts`` entry, or one of ``listen.allowed_hosts``. Else 421 ``misdirected_request``
  (400 ``bad_request`` when it is not a host at all).
- A browser request that is cross-site (``Sec-Fetch-Site: cross-site``, or an ``Origin``
  that is neither this proxy's own nor in ``listen.allowed_origins``) is 403 ``forbidden``,
  unless its connector sets ``allow_browser``. Clients that are not browsers send neither
  header, and are never affected.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import hdrs, web
from yarl import URL

from proxy.config.models import Settings
from proxy.errors import BadRequestError, ForbiddenError, MisdirectedRequestError

# RFC 9110 §7.2: Host = uri-host [ ":" port ], uri-host an IP literal or a reg-name (RFC 3986
# §3.2.2). Anything else (`/`, `?`, `#`, `@`, spaces) is malformed, not merely unknown.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?")


_ACCEPTED_MAX = 64
"""Accepted ``Host`` values remembered (a client sending ever new ones is checked in full)."""


def _hostname(host: str) -> str:
    """``Host`` without its port, lower-cased; IPv6 literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class BrowserGuard:
    def __init__(self, settings: Settings) -> None:
        listen = settings.listen
        names = {"localhost", _hostname(listen.host), *map(_hostname, listen.allowed_hosts)}
        for connector in settings.connectors.values():
            names.update(_hostname(host) for host in connector.hosts)
            redirect_uri = getattr(connector.auth, "redirect_uri", None)
            if redirect_uri is not None:  # this proxy's public name, where consents return
                names.add((URL(redirect_uri).host or "").lower())
        self._names = frozenset(names)
        self._origins = frozenset(listen.allowed_origins)
        self._accepted: set[str] = set()
        """``Host`` values that passed :meth:`check_host`, verbatim (at most
        :data:`_ACCEPTED_MAX`): clients send the same one or two on every request, and the
        verdict depends on nothing else."""

    def check_host(self, request: web.BaseRequest) -> None:
        host = request.headers.get(hdrs.HOST)
        if host is None or host in self._accepted:
            return  # HTTP/1.0 without Host (not a browser), or a value seen and accepted
        if not _HOST.fullmatch(host.strip()):
            raise BadRequestError("malformed Host header")
        name = _hostname(host)
        if name in self._names or _is_ip_literal(name):
            if len(self._accepted) < _ACCEPTED_MAX:
                self._accepted.add(host)
            return
        raise MisdirectedRequestError(
            "this proxy does not serve that Host; add it to listen.allowed_hosts if it should"
        )

    def check_cross_site(self, request: web.BaseRequest, allowed: bool) -> None:
        """403 for a cross-site browser request, unless ``allowed`` (``allow_browser``)."""
        if allowed:
            return
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None:
            origin = origin.strip().lower().rstrip("/")
            own = f"http://{request.headers.get(hdrs.HOST, '').strip().lower()}"
            if origin in self._origins or origin == own:
                return
        elif request.headers.get("Sec-Fetch-Site", "").strip().lower() != "cross-site":
            return
        raise ForbiddenError(
            "cross-site browser requests are not served: the connector does not set "
            "allow_browser, and the origin is not in listen.allowed_origins"
        )
