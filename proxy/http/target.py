"""The request target, parsed once from the raw request line and validated.

The decoded ``request.path``, ``match_info`` and ``request.url`` are never used: aiohttp
decodes ``%2e%2e`` to ``..`` and yarl would then resolve it above the connector's base path.
The path and query forwarded upstream are exactly the bytes the client sent, after checks
that no segment can climb out of the route, once decoded by whoever reads them next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.errors import BadRequestError

# Anything that is a dot-segment, a separator or a terminator once percent-decoded, by us or
# by a server behind the upstream (Envoy CVE-2019-9901, CVE-2021-29492).
_ENCODED_DANGER = re.compile(r"%(?:2f|5c|00)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DOT_SEGMENT = re.compile(r"(?:\.|%2e){1,2}", re.IGNORECASE)


# The methods aiohttp's C parser (llhttp) knows; anything else it refuses with a 400. The
# pure-Python parser accepts any token, lowercase too: checking here gives both parsers one
# rule (a lowercase "get" is not GET to every server behind the upstream).
KNOWN_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


def check_method(method: str) -> None:
    if method not in KNOWN_METHODS:
        raise BadRequestError("unknown request method")


@dataclass(frozen=True, slots=True)
class Target:
    """A validated request target.

    ``authority`` is set for absolute-form targets (``GET http://host/x``), the way a client
    with ``HTTP_PROXY`` set asks. ``path`` is the raw, still-encoded path; ``query`` the raw
    query string without ``?`` (``None`` when the target had no ``?`` at all).
    """

    path: str
    query: str | None
    authority: str | None = None


def parse_target(raw: str) -> Target:
    """Split and validate a raw request target. Raises :class:`BadRequestError`."""
    raw = raw.split("#", 1)[0]  # a fragment is never sent upstream (A14)
    authority = None
    if not raw.startswith("/"):
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise BadRequestError("request target must be a path or an absolute http:// URI")
        authority, slash, rest = rest.partition("/")
        if not authority or "@" in authority:
            raise BadRequestError("absolute URI has no valid host")
        raw = slash + rest or "/"
        authority = authority.lower()
    path, question, query = raw.partition("?")
    validate_path(path)
    return Target(path=path, query=query if question else None, authority=authority)


def validate_path(path: str) -> None:
    """Reject any path that could leave the route once decoded or normalised."""
    # Each check runs only when the characters it looks for are there: most paths have
    # neither '%' nor '.', and this runs for every request.
    if not path.startswith("/"):
        raise BadRequestError("path must start with '/'")
    escaped = "%" in path
    if "\\" in path or (escaped and _ENCODED_DANGER.search(path)):
        raise BadRequestError("path contains an encoded slash, backslash or NUL")
    if escaped and _BAD_ESCAPE.search(path):
        raise BadRequestError("path contains an invalid percent-escape")
    if not path.isascii() or not path.isprintable():
        raise BadRequestError("path contains non-ASCII or control characters")
    if "//" in path:
        raise BadRequestError("path contains an empty segment ('//')")
    if escaped or "." in path:
        for segment in path.split("/"):
            # Tomcat-style parameters: `/x;/../y` and `/..;x/` are dot-segments to some servers.
            for part in segment.split(";"):
                if _DOT_SEGMENT.fullmatch(part):
                    raise BadRequestError("path contains a '.' or '..' segment")
