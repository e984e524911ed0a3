"""Who may use the proxy: the socket peer address and a shared client key (``clients``).

Both checks run before any routing or credential work, so an outsider can neither use the
injected credentials nor make the proxy hammer an identity provider (docs/design.md).
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import hdrs, web

from proxy.config.models import ClientsConfig
from proxy.errors import ForbiddenError


def peer_address(request: web.BaseRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The socket peer's address (IPv4-mapped IPv6 as IPv4); None when it has none."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    try:
        address = ipaddress.ip_address(peer[0]) if peer else None
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAccess:
    def __init__(self, config: ClientsConfig) -> None:
        self._networks = tuple(config.allow_cidrs)
        self._keys = tuple(
            (name, key.get_secret_value().encode()) for name, key in config.api_keys.items()
        )

    def check_peer(self, request: web.BaseRequest) -> None:
        """Allow the socket peer only if it lies in ``allow_cidrs`` (headers never count)."""
        if not self._networks:
            return
        address = peer_address(request)
        if address is None or not any(address in network for network in self._networks):
            raise ForbiddenError("client address not allowed")

    @staticmethod
    def peer_is_loopback(request: web.BaseRequest) -> bool:
        address = peer_address(request)
        return address is not None and address.is_loopback

    def check_key(self, request: web.BaseRequest) -> str | None:
        """Require ``Proxy-Authorization: Bearer <key>`` with a configured key, compared in
        constant time; exactly one such header. Returns the name of the client whose key
        it is (None when no keys are configured)."""
        if not self._keys:
            return None
        values = request.headers.getall(hdrs.PROXY_AUTHORIZATION, ())
        if len(values) != 1:
            raise ForbiddenError("a client key is required (Proxy-Authorization: Bearer <key>)")
        scheme, _, presented = values[0].partition(" ")
        candidate = presented.encode("utf-8", "surrogateescape")
        matched = None
        for name, key in self._keys:  # every key is compared: timing tells nothing
            if hmac.compare_digest(candidate, key) and matched is None:
                matched = name
        if scheme.lower() != "bearer" or matched is None:
            raise ForbiddenError("client key not accepted")
        return matched
