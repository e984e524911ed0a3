"""Request ids (``X-Request-ID``): the client's, when it is a plausible id, else a new one.

The id is forwarded upstream, returned to the client on every answer (the proxy's own errors
too) and logged, so one id follows a request through the client's, the proxy's and the
upstream's logs. A client's id that could break a header or a log line (too long, spaces,
control characters) is replaced, not trusted.
"""

from __future__ import annotations

import os
import re

from aiohttp import web

HEADER = "X-Request-ID"
_PLAUSIBLE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


def take_request_id(request: web.BaseRequest) -> str:
    """The request's id (the gateway keeps it in the request's facts)."""
    offered = request.headers.get(HEADER)
    return offered if offered and _PLAUSIBLE.fullmatch(offered) else os.urandom(16).hex()
