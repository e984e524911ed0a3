"""Where log lines go: the two formats, and the one handler :func:`proxy.logs.configure_logging`
installs.

The handler writes records as any stream handler does, and also takes whole lines from the
access log's lane (:meth:`LineHandler.add_line`): formatted and scrubbed by the access
logger without the ``logging`` machinery (a record, its factory, the handler's lock and a
write per line cost ~12 us; a line in the lane ~4 us), and written together once per
event-loop iteration, as nginx's ``access_log ... buffer=`` writes, but never held longer
than that iteration. A record emitted meanwhile writes the pending lines first, and so does
a flush (at exit, or when a worker ends): lines stay in order and none is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import orjson

from proxy.secrets.redaction import REDACTOR

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

FIELDS = (
    "request_id",
    "connector",
    "client",
    "client_name",
    "method",
    "path",
    "status",
    "duration_ms",
    "upstream_ms",
    "retries",
    "bytes",
    "event",
    "error",
)
"""The fields a record may carry, in the order the JSON format writes them."""

# Fields a client's bytes reach (the rest are config names, addresses, numbers, codes).
_CLIENT_TEXT = frozenset({"path", "request_id"})


class _Stamps:
    """``strftime`` once a second, not once a line."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time]) -> None:
        self._pattern, self._convert = pattern, convert
        self._second, self._stamp = -1, ""

    def __call__(self, seconds: float) -> str:
        if int(seconds) != self._second:
            self._second = int(seconds)
            self._stamp = time.strftime(self._pattern, self._convert(seconds))
        return self._stamp


_UTC = _Stamps("%Y-%m-%dT%H:%M:%S", time.gmtime)
_LOCAL = _Stamps(logging.Formatter.default_time_format, time.localtime)


def json_line(
    created: float,
    level: str,
    logger: str,
    message: str,
    fields: Mapping[str, Any],
    exception: str | None = None,
) -> str:
    """One JSON object: ``ts``, ``level``, ``logger``, ``msg``, then the :data:`FIELDS` that
    are set, those a client's text reaches scrubbed (``message`` must be already)."""
    entry: dict[str, Any] = {
        "ts": f"{_UTC(created)}.{int(created % 1 * 1000):03d}Z",
        "level": level.lower(),
        "logger": logger,
        "msg": message,
    }
    for name in FIELDS:
        value = fields.get(name)
        if value is not None:
            entry[name] = REDACTOR.scrub(value) if name in _CLIENT_TEXT else value
    if exception:
        entry["exception"] = exception
    return orjson.dumps(entry).decode()


def text_line(
    created: float, level: str, logger: str, message: str, fields: Mapping[str, Any]
) -> str:
    """:data:`TEXT_FORMAT` as ``logging.Formatter`` writes it for a record made at
    ``created`` (``message`` already scrubbed; the text format shows no fields)."""
    msecs = int((created - int(created)) * 1000)
    return f"{_LOCAL(created)},{msecs:03d} {level} {logger}: {message}"


class JsonFormatter(logging.Formatter):
    """:func:`json_line` of a record; its message and traceback were scrubbed when it was
    made (:mod:`proxy.secrets.redaction`), its fields are here."""

    def format(self, record: logging.LogRecord) -> str:
        return json_line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            record.__dict__,
            record.exc_text,
        )


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler with the access log's lane (see the module's docstring)."""

    def __init__(self, stream: IO[str], fmt: str) -> None:
        super().__init__(stream)
        json = fmt == "json"
        self.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
        self.line = json_line if json else text_line
        """How the lane formats a line: ``line(created, level, logger, message, fields)``."""
        self._pending: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def add_line(self, line: str, loop: asyncio.AbstractEventLoop | None) -> None:
        """Write ``line`` (formatted, scrubbed) once this iteration of ``loop`` ends; at once
        without a running loop."""
        with self.lock:  # type: ignore[union-attr]  # (made by the constructor)
            self._pending.append(line + "\n")
            if loop is not None and loop.is_running():
                if self._scheduled is loop:
                    return  # written with the lines before it
                self._scheduled = loop  # (a loop that stopped first left its lines here)
                loop.call_soon(self.write_pending)
                return
        self.write_pending()

    def write_pending(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = None
            if not self._pending:
                return
            lines, self._pending = "".join(self._pending), []
            try:
                self.stream.write(lines)
                self.stream.flush()
            except Exception:  # as emit would: a broken stream never breaks a request
                self.handleError(logging.makeLogRecord({"msg": "access log lines"}))

    def emit(self, record: logging.LogRecord) -> None:
        self.write_pending()
        super().emit(record)

    def flush(self) -> None:
        self.write_pending()
        super().flush()


def access_lane(logger: logging.Logger) -> LineHandler | None:
    """The handler an INFO line of ``logger`` would reach, when it is the only one, it and
    the loggers on the way filter nothing, and it takes INFO: then the lane gives the same
    line. None otherwise (handlers or filters added, by an embedding program or a test)."""
    if not logger.isEnabledFor(logging.INFO):
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or (node.handlers and node is not logging.root) or not node.propagate:
            return None
        node = node.parent
    handlers = logging.root.handlers
    if len(handlers) != 1 or type(handlers[0]) is not LineHandler:
        return None
    handler = handlers[0]
    return handler if not handler.filters and handler.level <= logging.INFO else None
