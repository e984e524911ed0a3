"""Logging set-up and the access log.

The access log never records a query string (it may carry a token, RFC 6750 §2.3) nor any
header. aiohttp's own parser-error records quote the offending request bytes, which may hold
a client's credential; they are reduced to the error class.
"""

from __future__ import annotations

import logging
import sys

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy.secrets import redaction

ACCESS_LOGGER = "tokenproxy.access"

# What the request path tells the access log.
connector_key = web.RequestKey("connector", str)
aborted_key = web.RequestKey("aborted", bool)


class AccessLogger(AbstractAccessLogger):
    """``peer "METHOD /path HTTP/1.1" status bytes duration connector=name``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.raw_path.split("?", 1)[0].split("#", 1)[0]
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.1fms connector=%s%s',
            request.remote,
            request.method,
            path,
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time * 1000,
            request.get(connector_key, "-"),
            " aborted" if request.get(aborted_key) else "",
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class ParserErrorFilter(logging.Filter):
    """aiohttp's server records keep their message but lose the exception text.

    The text of a ``BadHttpMessage`` quotes the raw header line that failed to parse. The
    redacting record factory has already rendered the traceback into ``exc_text`` (and
    dropped ``exc_info``, keeping ``exc_class``), so that is where it is cut, down to the
    exception's class name.
    Our own connection handler logs no exception at all; this guards every other path.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            kind = type(record.exc_info[1]).__name__
        elif record.exc_text:
            kind = getattr(record, "exc_class", "exception")
        else:
            return True
        record.msg = f"{record.getMessage()}: {kind}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    install_filters()


def install_filters() -> None:
    redaction.install()
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrorFilter) for f in server_logger.filters):
        server_logger.addFilter(ParserErrorFilter())
