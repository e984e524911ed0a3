"""Secrets never reach a log: every record is scrubbed when it is created, whatever its logger.

:func:`install` replaces the log-record factory, so third-party loggers, every handler
(including test capture) and exception tracebacks are covered by one mechanism. A record's
message and traceback text are rendered, scrubbed and stored; its ``exc_info`` is dropped,
since exception objects (aiohttp's ``request_info``) hold the injected header.

Two kinds of scrubbing:

- **known values**: every secret of the loaded config, and the tokens each connector holds
  now (the current and previous generation);
- **shapes**: header fields that carry credentials (``Authorization: ...`` in any quoting, as in
  exception reprs), ``Bearer``/``Basic`` credentials, and token-like query parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import traceback
from collections.abc import Iterable
from typing import Any

from yarl import URL

from proxy.config.base import Secret

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words

_SHAPES = (
    (
        re.compile(
            r"(?i)\b(authorization|proxy-authorization|cookie|x-api-key)"
            r"(['\"]?\s*[:=]\s*['\"]?)([^'\"\r\n,}]+)"
        ),
        rf"\1\2{MASK}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/=!]{6,}"), rf"\1 {MASK}"),
    (
        re.compile(
            r"(?i)([?&](?:access_token|id_token|refresh_token|token|api_?key|key|"
            r"client_secret|password|assertion)=)[^&\s'\"]+"
        ),
        rf"\1{MASK}",
    ),
)


class Redactor:
    def __init__(self) -> None:
        self._static: set[str] = set()
        self._dynamic: dict[str, tuple[str, ...]] = {}
        self._values: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        """Values to mask for as long as the process runs (config secrets)."""
        with self._lock:
            self._static.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)
            self._rebuild()

    def hold(self, owner: str, values: Iterable[str]) -> None:
        """The live tokens of ``owner``: these and the previous generation are masked."""
        fresh = tuple(v for v in values if len(v) >= MIN_SECRET_LENGTH)
        with self._lock:
            previous = self._dynamic.get(owner, ())[: len(fresh)]
            self._dynamic[owner] = fresh + previous
            self._rebuild()

    def _rebuild(self) -> None:
        values = self._static.union(*self._dynamic.values())
        # Longest first: a secret that contains another is masked whole.
        self._values = tuple(sorted(values, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        # Each shape needs a telltale substring; most lines (the access log's) have none, and
        # substring tests are far cheaper than regex scans (measured on access-log lines).
        lowered = text.lower()
        (header, header_mask), (scheme, scheme_mask), (query, query_mask) = _SHAPES
        if "authoriz" in lowered or "cookie" in lowered or "api-key" in lowered:
            text = header.sub(header_mask, text)
        if "bearer" in lowered or "basic" in lowered:
            text = scheme.sub(scheme_mask, text)
        if "?" in text or "&" in text:
            text = query.sub(query_mask, text)
        return text


REDACTOR = Redactor()


def secret_values(node: Any) -> list[str]:
    """Every secret value in a config model tree (``SecretStr`` and ``Secret[...]``)."""
    found: list[str] = []
    if isinstance(node, Secret) and isinstance(node.get_secret_value(), str):
        value = node.get_secret_value()
        found.append(value)
        if "://" in value:  # a URL with credentials (http_proxy): its password alone too
            try:
                password = URL(value).password
            except ValueError:
                password = None
            if password:
                found.append(password)
    elif isinstance(node, Secret):
        found.extend(_strings(node.get_secret_value()))
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for field in dataclasses.fields(node):
            found.extend(secret_values(getattr(node, field.name)))
    elif isinstance(node, dict):
        for item in node.values():
            found.extend(secret_values(item))
    elif isinstance(node, list | tuple):
        for item in node:
            found.extend(secret_values(item))
    return found


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for item in node.values() for s in _strings(item)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


_installed = False


def install() -> None:
    """Scrub every log record from now on (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    create = logging.getLogRecordFactory()

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = create(*args, **kwargs)
        record.msg = REDACTOR.scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = REDACTOR.scrub(text.rstrip("\n"))
            record.exc_class = type(record.exc_info[1]).__name__  # for filters, after this
            record.exc_info = None
        return record

    logging.setLogRecordFactory(scrubbed_record)
