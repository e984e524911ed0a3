"""Logging set-up and the access log.

Two formats: ``text`` (a terminal's lines) and ``json`` (one object a line: ``ts``, ``level``,
``logger``, ``msg``, and the fields a record carries: a request's ``request_id``,
``connector``, ``client``, ``method``, ``path``, ``status``, ``duration_ms``, ``upstream_ms``,
``bytes``; a token event's ``connector``, ``event`` and ``error``). Every record is scrubbed
by the one redaction mechanism (:mod:`proxy.secrets.redaction`), its fields too.

The access log never records a query string (it may carry a token, RFC 6750 §2.3) nor any
header. aiohttp's own parser-error records quote the offending request bytes, which may hold
a client's credential; they are reduced to the error class.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy.arguments import LOG_FORMAT_ENV
from proxy.log_output import LineHandler, access_lane
from proxy.secrets import redaction
from proxy.secrets.redaction import REDACTOR

ACCESS_LOGGER = "tokenproxy.access"

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@")


class RequestFacts:
    """What the request path learns about one request, for its answer, its metrics and its
    access line: one object the gateway makes, set by attribute. (Seven keys of the
    request's own mapping cost a Python call each, and one that was never set raised inside
    aiohttp when read.)"""

    __slots__ = (
        "aborted",
        "client",
        "connector",
        "request_id",
        "retries",
        "started",
        "upstream_seconds",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        """``time.perf_counter()`` when the gateway took the request."""
        self.request_id = ""
        """The client's ``X-Request-ID``, or the one made for it (:mod:`proxy.http.requestid`)."""
        self.connector: str | None = None
        self.client: str | None = None
        """The calling client's name (the ``clients.api_keys`` entry its key matched)."""
        self.upstream_seconds: float | None = None
        """How long the upstream took to answer (the last send's headers)."""
        self.retries = 0
        """Sends to the upstream after the first (retries and the re-auth replay)."""
        self.aborted = False
        """The client connection was cut mid-answer (the upstream failed after it began)."""


facts_key = web.RequestKey("facts", RequestFacts)

_perf_counter = time.perf_counter
_wall_clock = time.time


class AccessLogger(AbstractAccessLogger):
    """``peer "METHOD /path HTTP/1.1" status bytes duration connector=name id=request-id``
    (then ``client=name`` and ``retries=N`` when there are), with the same facts as
    fields for the JSON format."""

    _running: asyncio.AbstractEventLoop | None = None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.record(request, response.status, response.body_length, time)

    def record(self, request: web.BaseRequest, status: int, sent: int, time: float) -> None:
        """One line for ``request``, answered ``status`` in ``sent`` bytes (head included)."""
        path = request.raw_path.split("?", 1)[0].split("#", 1)[0]
        if "@" in path:  # an absolute-form target's user:password@ (a client's secret)
            path = _USERINFO.sub(r"\1", path)
        version = request.version
        # None for what never reached the gateway (a request aiohttp's parser refused).
        facts = request.get(facts_key)
        connector = request_id = client = upstream_ms = retries = None
        aborted = False
        if facts is not None:
            # uvloop's loop.time(), which aiohttp's ``time`` is, steps in milliseconds
            time = _perf_counter() - facts.started
            connector, request_id, client = facts.connector, facts.request_id, facts.client
            retries, aborted = facts.retries or None, facts.aborted
            if facts.upstream_seconds is not None:  # (rounded here, not on the hot path)
                upstream_ms = round(facts.upstream_seconds * 1000, 2)
        duration_ms = round(time * 1000, 2)
        message = (
            f'{request.remote} "{request.method} {path} HTTP/{version.major}.{version.minor}" '
            f"{status} {sent} {duration_ms:.1f}ms connector={connector or '-'} "
            f"id={request_id or '-'}"
            f"{'' if client is None else f' client={client}'}"
            f"{'' if retries is None else f' retries={retries}'}"
            f"{' aborted' if aborted else ''}"
        )
        fields = {
            "request_id": request_id,
            "connector": connector,
            "client": request.remote,
            "client_name": client,
            "retries": retries,
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "upstream_ms": upstream_ms,
            "bytes": sent,
        }
        lane = access_lane(self.logger)
        if lane is None:  # through logging, for the handlers and filters someone added
            self.logger.info("%s", message, extra=fields)
            return
        # The same line, scrubbed as the record factory scrubs a record's message.
        line = lane.line(_wall_clock(), "INFO", self.logger.name, REDACTOR.scrub(message), fields)
        lane.add_line(line, self._loop())

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this logger's server runs on, looked up once (each look-up is a
        ``getpid`` on Python 3.11); None outside a loop."""
        if self._running is None:
            try:
                self._running = asyncio.get_running_loop()
            except RuntimeError:
                return None
        return self._running

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


def log_format(requested: str | None) -> str:
    """``--log-format``, else ``$TOKENPROXY_LOG_FORMAT``, else text on a terminal, JSON
    otherwise (a container's log collector)."""
    chosen = requested or os.environ.get(LOG_FORMAT_ENV)
    if chosen in ("json", "text"):
        return chosen
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(level: str = "info", fmt: str | None = "text") -> None:
    """``fmt``: ``text``, ``json``, or None to choose (:func:`log_format`)."""
    # Neither format shows the caller's file and line (a stack walk per record, a quarter
    # of an access line's cost), nor its thread or process (each looked up per record).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [LineHandler(sys.stderr, log_format(fmt))]
    root.setLevel(level.upper())
    install_filters()


def install_filters() -> None:
    redaction.install()
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrorFilter) for f in server_logger.filters):
        server_logger.addFilter(ParserErrorFilter())
