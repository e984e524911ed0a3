"""A whole ``web.Response`` as the bytes aiohttp's server would send for it, in one piece.

aiohttp writes a response through ``prepare`` and ``write_eof``: two coroutines, a stream
writer and header preparation that cost ~13 us per small answer, a tenth of a proxied
request (benchmarks/README.md). For the answers the lean server sends most (an upstream
answer whose whole body came with its headers, the proxy's JSON errors), :func:`encode`
builds the same bytes directly, with aiohttp's own rules and helpers:

- ``Content-Length`` from the body unless set, removed for 1xx, 204 and 304; no body after
  a ``HEAD`` or for those codes (``must_be_empty_body``);
- ``Content-Type: application/octet-stream`` when a non-empty body has none;
- ``Date`` and ``Server`` unless present; ``Connection: keep-alive`` for a kept HTTP/1.0
  connection, ``Connection: close`` for a closing HTTP/1.1 one;
- the head serialized by aiohttp's serializer, which refuses CR and LF in names and values.

Anything else (a streamed, compressed or cookie-setting response, a payload object) is
``None``: the caller lets aiohttp write it.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.helpers import (
    must_be_empty_body,
    rfc822_formatted_time,
    should_remove_content_length,
)
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.http_writer import _serialize_headers


def encode(request: web.BaseRequest, response: web.StreamResponse) -> tuple[bytes, bool] | None:
    """The bytes of ``response`` and whether the connection stays open after it; ``None``
    when only aiohttp's own writer can send it."""
    if type(response) is not web.Response or response.prepared or response.chunked:
        return None
    body = b"" if response.body is None else response.body
    # Private fields read as aiohttp's own _start does; tests/test_lean.py compares the
    # bytes with aiohttp's for every case, so a change in aiohttp shows there.
    if not isinstance(body, bytes) or response._cookies or response._compression:
        return None
    method, status, version = request.method, response.status, request.version
    keep_alive = response.keep_alive
    if keep_alive is None:
        keep_alive = request.keep_alive
    headers = response.headers
    # Response._start, then StreamResponse._prepare_headers, in that order.
    length = headers.get(hdrs.CONTENT_LENGTH)
    if length is None and (body or (status != 304 and method != hdrs.METH_HEAD)):
        length = headers[hdrs.CONTENT_LENGTH] = str(len(body))
    empty = must_be_empty_body(method, status)
    if empty:
        if length is not None and should_remove_content_length(method, status):
            del headers[hdrs.CONTENT_LENGTH]
        headers.popall(hdrs.TRANSFER_ENCODING, None)
    elif length is None or int(length) != 0:  # as aiohttp: a body, or an unknown length
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if hdrs.CONNECTION not in headers:
        if keep_alive:
            if version == HttpVersion10:
                headers[hdrs.CONNECTION] = "keep-alive"
        elif version == HttpVersion11:
            headers[hdrs.CONNECTION] = "close"
    head = _serialize_headers(
        f"HTTP/{version.major}.{version.minor} {status} {response.reason}", headers
    )
    return (head if empty else head + body), bool(keep_alive)
