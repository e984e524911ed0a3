"""Which headers cross the proxy, in each direction (RFC 9110 §7.6.1; docs/design.md).

Filtering happens before the credential is injected, so no client header, ``Connection``
nomination included, can remove or shadow what the proxy adds.
"""

from __future__ import annotations

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

# Hop-by-hop: meaningful only for one connection, never forwarded in either direction.
# All sets hold lower-case names.
HOP_BY_HOP: frozenset[str] = frozenset(
    name.lower()
    for name in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        "Proxy-Connection",
        hdrs.PROXY_AUTHORIZATION,
        hdrs.PROXY_AUTHENTICATE,
        "HTTP2-Settings",
    )
)

# Request headers the proxy owns or answers itself:
# - Host comes from the connector's upstream, never from the client;
# - the client's own Authorization is replaced by the connector's credential;
# - Content-Length framing is rebuilt by the client side (the value is copied, see below);
# - Expect: 100-continue was already answered to the client by the server side;
# - forwarding headers are stripped inbound and none are added (RFC 9700 §4.13).
_REQUEST_OWNED: frozenset[str] = frozenset(
    name.lower()
    for name in (
        hdrs.HOST,
        hdrs.AUTHORIZATION,
        hdrs.CONTENT_LENGTH,
        hdrs.EXPECT,
        hdrs.FORWARDED,
        hdrs.X_FORWARDED_FOR,
        hdrs.X_FORWARDED_HOST,
        hdrs.X_FORWARDED_PROTO,
        "X-Real-IP",
    )
)
REQUEST_DROPPED: frozenset[str] = HOP_BY_HOP | _REQUEST_OWNED

# Response framing is rebuilt by the server side from what was actually read.
RESPONSE_DROPPED: frozenset[str] = HOP_BY_HOP | frozenset({hdrs.CONTENT_LENGTH.lower()})


# What nearly every ``Connection`` header says, parsed once (see _nominated).
_PLAIN_CONNECTION = {value: frozenset({value}) for value in ("keep-alive", "close")}


def _nominated(headers: CIMultiDictProxy[str]) -> set[str] | frozenset[str]:
    """Header names listed in every ``Connection`` header, lower-cased."""
    values = headers.getall(hdrs.CONNECTION, ())
    if len(values) == 1:  # the usual single keep-alive or close: no list to parse
        plain = _PLAIN_CONNECTION.get(values[0].lower())
        if plain is not None:
            return plain
    names: set[str] = set()
    for value in values:
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def filter_headers(headers: CIMultiDictProxy[str], dropped: frozenset[str]) -> CIMultiDict[str]:
    """Copy ``headers`` without ``dropped``, ``Connection``-nominated and underscore names.

    Underscored names are dropped as nginx does by default: ``X_Forwarded_For`` may reach an
    application as ``X-Forwarded-For`` (docs/design.md).
    """
    nominated = _nominated(headers) if hdrs.CONNECTION in headers else ()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in dropped or "_" in name or lower in nominated:
            continue
        out.add(name, value)
    return out
