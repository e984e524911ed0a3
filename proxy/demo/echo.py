"""The demo upstream: answers every request with a JSON description of what it received.

Used by ``tokenproxy demo`` to show what the proxy sent, and by the tests as the base of
their recording fake upstream.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web


async def describe_request(request: web.BaseRequest) -> dict[str, Any]:
    """Method, raw path and query, every header (duplicates kept, in order), body size and hash."""
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():  # streamed: any size, constant memory
        digest.update(chunk)
        size += len(chunk)
    path, _, query = request.raw_path.partition("?")
    return {
        "method": request.method,
        "path": path,
        "query": query,
        "headers": [[name, value] for name, value in request.headers.items()],
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    }


async def echo(request: web.BaseRequest) -> web.Response:
    return web.Response(
        body=orjson.dumps(await describe_request(request), option=orjson.OPT_INDENT_2),
        content_type="application/json",
    )


def create_echo_server() -> web.Server:
    # No access log: the demo prints the proxy's own, which is the one worth reading.
    return web.Server(echo, access_log=None)
