"""The listening side: an aiohttp low-level server with the limits of ``server`` applied.

No router, no middlewares, no static files, no WebSockets: one handler (:class:`Gateway`)
sees every request, which removes most of aiohttp's historical attack surface
(docs/design.md, "Hardening decisions") and per-request overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp.http_parser
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

from proxy.config.models import Settings
from proxy.connectors import Connector
from proxy.errors import BadRequestError, ProxyError
from proxy.http.gateway import Gateway, error_response
from proxy.logs import ACCESS_LOGGER, AccessLogger
from proxy.metrics.exposition import StateOf, connector_state
from proxy.metrics.workers import WorkerSnapshots
from proxy.runtime import Plan, Runtime, open_runtime, prepare
from proxy.tokens.model import Clock

logger = logging.getLogger(__name__)


def http_parser_warning() -> str | None:
    """A warning when aiohttp runs its pure-Python HTTP parser instead of the C one.

    Most aiohttp request-smuggling CVEs of 2023-2026 hit only the Python parser
    (docs/design.md, "Hardening decisions").
    """
    module = aiohttp.http_parser.HttpRequestParser.__module__
    if module == "aiohttp._http_parser":
        return None
    return (
        "aiohttp is using its pure-Python HTTP parser (AIOHTTP_NO_EXTENSIONS set, or no C "
        "extension for this platform); it is slower and has had request-smuggling bugs the "
        "C parser had not"
    )


class _ProxyRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering and logging its own errors our way.

    aiohttp's default 400 page and its "Error handling request" record quote the request
    bytes its parser rejected (the exception's text and traceback), which may hold a
    client's credential. Ours say only what kind of error it was, under either parser.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "unknown"
        # Non-HTTP bytes on a first request (a TLS hello, a port scan) are noise: debug only.
        quiet = self._request_count == 1 and isinstance(exc, BadHttpMethod)
        (logger.debug if quiet else logger.warning)(
            "bad request from %s: %s (%d)", request.remote, kind, status
        )
        if request.writer.output_size > 0:
            # Some of a response went out already: the connection is broken (aiohttp's rule).
            raise ConnectionError("a response is already under way; closing the connection")
        error = (
            BadRequestError("malformed HTTP request")
            if status == 400
            else ProxyError("internal error")
        )
        response = error_response(error)
        response.set_status(status)
        response.force_close()
        return response


_LINGERING_TIME = 5.0


class _ProxyHTTPServer(web.Server):
    def __call__(self) -> RequestHandler:
        # web.Server offers no handler-class option; this mirrors its own __call__ (3.14).
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyServer:
    """Start and stop one listening proxy. ``port`` is the bound port (useful with port 0).

    ``start`` is exception-safe: if any step fails (a taken port, say), everything the
    earlier steps opened is closed before the error propagates. ``plan`` is the prepared
    build (:func:`proxy.runtime.prepare`); without one, ``start`` prepares it.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        *,
        reuse_port: bool = False,
        plan: Plan | None = None,
        metrics_dir: Path | None = None,
    ) -> None:
        """``metrics_dir``: with ``--workers``, where the workers' metrics meet."""
        self.settings = settings
        self._clock = clock
        self._reuse_port = reuse_port
        self._plan = plan
        self._metrics_dir = metrics_dir
        self.port: int | None = None
        self.addresses: list[Any] = []
        self.runtime: Runtime | None = None
        self._stack: AsyncExitStack | None = None
        self._http: web.Server | None = None

    @property
    def client_connections(self) -> int:
        """Client connections open now (each with its handler task)."""
        return 0 if self._http is None else len(self._http.connections)

    async def start(self) -> None:
        plan = self._plan or prepare(self.settings)
        async with AsyncExitStack() as stack:
            runtime = await stack.enter_async_context(open_runtime(plan, self._clock))
            runner = self._runner(runtime)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(
                runner,
                self.settings.listen.host,
                self.settings.listen.port,
                reuse_port=self._reuse_port or None,
                backlog=1024,
            )
            await site.start()
            self.port = runner.addresses[0][1]
            plan.site.bound(self.port)
            self._http = runner.server
            stack.push_async_callback(self._warm_up(runtime))
            if self._metrics_dir is not None:
                stack.push_async_callback(self._share_metrics(runtime, self._metrics_dir))
            self.addresses = runner.addresses
            self.runtime, self._stack = runtime, stack.pop_all()  # stop() closes it all

    def _runner(self, runtime: Runtime) -> web.ServerRunner:
        limits = self.settings.server
        handler = _ProxyHTTPServer(
            Gateway(self.settings, runtime),
            handler_cancellation=True,  # a client that goes away cancels its upstream request
            keepalive_timeout=limits.keepalive_timeout,
            # After an error answer, the unread rest of a body is read and dropped so the
            # client sees the answer rather than a reset; a client that stops sending must
            # not hold the connection for aiohttp's 10 s (nginx: lingering_timeout 5 s).
            lingering_time=min(_LINGERING_TIME, limits.body_timeout),
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            auto_decompress=False,
            access_log_class=AccessLogger,
            access_log=logging.getLogger(ACCESS_LOGGER) if limits.access_log else None,
        )
        return web.ServerRunner(
            handler, handle_signals=False, shutdown_timeout=limits.shutdown_timeout
        )

    @staticmethod
    def _warm_up(runtime: Runtime) -> Callable[[], Awaitable[None]]:
        """Start fetching the first token of every ``warmup`` and interactive connector
        (``/ready`` stays 503 until a ``warmup`` one has it); returns what cancels and awaits
        those fetches on stop.
        Failures are logged by the token manager, and the next request tries again."""

        async def warm(connector: Connector) -> None:
            with contextlib.suppress(ProxyError):
                await connector.authenticator.refresh(force=False)

        loop = asyncio.get_running_loop()
        # Interactive connectors too: they learn at once whether the store holds their
        # authorization, so status pages say "needs authorization" before any request.
        warmed = [
            c
            for c in runtime.connectors.values()
            if c.config.warmup or getattr(c.config.auth, "interactive", False)
        ]
        tasks = [loop.create_task(warm(c)) for c in warmed]

        async def cancel() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        return cancel

    @staticmethod
    def _share_metrics(runtime: Runtime, directory: Path) -> Callable[[], Awaitable[None]]:
        """Write this worker's metrics for the others every second; returns what stops it."""
        snapshots = runtime.snapshots = WorkerSnapshots(directory)

        def state() -> tuple[StateOf, bool | None]:
            described = {c.name: c.authenticator.describe() for c in runtime.connectors.values()}
            store = runtime.store
            return connector_state(described, time.time()), (
                None if store is None else store.health() == "ok"
            )

        task = asyncio.get_running_loop().create_task(snapshots.keep_writing(state))

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return cancel

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self.runtime = None


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (Ctrl-C, ``docker stop``)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    reuse_port: bool = False,
    plan: Plan | None = None,
    metrics_dir: Path | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then drain and close."""
    warning = http_parser_warning()
    if warning:
        logger.warning("%s", warning)
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    server = ProxyServer(settings, reuse_port=reuse_port, plan=plan, metrics_dir=metrics_dir)
    await server.start()
    logger.info(
        "tokenproxy listening on http://%s:%s with %d connector(s) (pid %d)",
        settings.listen.host,
        server.port,
        len(settings.connectors),
        os.getpid(),
    )
    try:
        await stop.wait()
    finally:
        logger.info("stopping")
        await server.stop()
