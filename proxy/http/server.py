"""The listening side: an aiohttp low-level server with the limits of ``server`` applied.

No router, no middlewares, no static files, no WebSockets: one handler (:class:`Gateway`)
sees every request, which removes most of aiohttp's historical attack surface
(docs/design.md, "Hardening decisions") and per-request overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import aiohttp.http_parser
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

from proxy.config.models import Settings
from proxy.connectors import Connector
from proxy.errors import BadRequestError, ConfigError, ProxyError
from proxy.http.gateway import error_response
from proxy.http.lean import LeanListener
from proxy.http.reload import (
    Generation,
    ReloadOutcome,
    inherit_tokens,
    needs_restart,
    open_generation,
    retire,
)
from proxy.logs import ACCESS_LOGGER, AccessLogger
from proxy.metrics.state import StateOf, connector_state
from proxy.metrics.workers import WorkerSnapshots
from proxy.runtime import Plan, Runtime, prepare
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
        response = _closing_answer(
            BadRequestError("malformed HTTP request")
            if status == 400
            else ProxyError("internal error")
        )
        response.set_status(status)  # 400, 500, or aiohttp's 504 for a handler's TimeoutError
        return response

    tunnel_host: str | None = None
    """Set on the handler of a CONNECT tunnel: every request inside must name this host."""
    tunnel_client: str | None = None
    """The client whose key the tunnel's CONNECT carried (named ``clients.api_keys``)."""
    tunnel_closed: asyncio.Future[None] | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.tunnel_closed is not None and not self.tunnel_closed.done():
            self.tunnel_closed.set_result(None)


def _closing_answer(error: ProxyError) -> web.Response:
    """The contract's answer for ``error``, closing the connection: what either connection
    handler answers for bytes it cannot parse, or when the gateway itself fails (it answers
    its own errors, so that is a bug)."""
    response = error_response(error)
    response.force_close()
    return response


_LINGERING_TIME = 5.0


class _ProxyHTTPServer(web.Server):
    """aiohttp's server whose connections start lean (:mod:`proxy.http.lean`): the usual
    request that arrives whole is answered there, and aiohttp's handler takes over the rest."""

    lean: LeanListener | None = None

    def __call__(self) -> RequestHandler:
        if self.lean is None:
            return self.handler()
        # The listener's protocol factory; aiohttp's own type says a RequestHandler.
        return self.lean()  # type: ignore[return-value]

    def handler(self) -> RequestHandler:
        """aiohttp's connection handler (web.Server offers no handler-class option; this
        mirrors its own __call__, 3.14)."""
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)

    @property
    def connections(self) -> list[RequestHandler]:
        lean = self.lean.connections if self.lean is not None else ()
        return [*super().connections, *cast(list[RequestHandler], list(lean))]

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for connection in self.lean.connections if self.lean is not None else ():
            connection.close()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        lean = self.lean.shutdown(timeout) if self.lean is not None else asyncio.sleep(0)
        await asyncio.gather(super().shutdown(timeout), lean)


class ProxyServer:
    """Start, reload and stop one listening proxy. ``port`` is the bound port (useful with
    port 0).

    ``start`` is exception-safe: if any step fails (a taken port, say), everything the
    earlier steps opened is closed before the error propagates. ``plan`` is the prepared
    build (:func:`proxy.runtime.prepare`); without one, ``start`` prepares it. ``load``
    reads the config again for :meth:`reload` (SIGHUP, ``POST /reload``); ``reload_all``,
    given to a worker of ``--workers``, has the parent reload every worker instead.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        *,
        reuse_port: bool = False,
        plan: Plan | None = None,
        metrics_dir: Path | None = None,
        load: Callable[[], Awaitable[Settings]] | None = None,
        reload_all: Callable[[], None] | None = None,
    ) -> None:
        """``metrics_dir``: with ``--workers``, where the workers' metrics meet."""
        self._initial = settings
        self._clock = clock
        self._reuse_port = reuse_port
        self._plan = plan
        self._metrics_dir = metrics_dir
        self._load = load
        self._reload_all = reload_all
        self.port: int | None = None
        self.addresses: list[Any] = []
        self._generation: Generation | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()
        self._stopping = False
        self._stack: AsyncExitStack | None = None
        self._http: web.Server | None = None

    @property
    def settings(self) -> Settings:
        """The config in force (the last one reloaded)."""
        return self._generation.plan.settings if self._generation else self._initial

    @property
    def runtime(self) -> Runtime | None:
        return self._generation.runtime if self._generation else None

    @property
    def client_connections(self) -> int:
        """Client connections open now (each with its handler task)."""
        return 0 if self._http is None else len(self._http.connections)

    async def start(self) -> None:
        plan = self._plan or prepare(self._initial)
        async with AsyncExitStack() as stack:
            reload = self.reload if self._load is not None else None
            generation = await open_generation(plan, self._clock, reload, self._new_connection)
            self._generation = generation
            stack.callback(setattr, self, "_generation", None)  # last, once all is closed
            stack.push_async_callback(self._close_generations)
            runner = self._runner()
            await runner.setup()
            stack.push_async_callback(runner.cleanup)  # drains in-flight requests first
            site = web.TCPSite(
                runner,
                plan.settings.listen.host,
                plan.settings.listen.port,
                reuse_port=self._reuse_port or None,
                backlog=1024,
            )
            await site.start()
            self.port = runner.addresses[0][1]
            plan.site.bound(self.port)
            self._http = runner.server
            generation.stack.push_async_callback(self._warm_up(generation.runtime))
            if self._metrics_dir is not None:
                stack.push_async_callback(self._share_metrics(self._metrics_dir))
            self.addresses = runner.addresses
            self._stack = stack.pop_all()  # stop() closes it all

    def _new_connection(self) -> RequestHandler:
        """aiohttp's connection handler, as the listener's take over (a CONNECT tunnel's)."""
        assert isinstance(self._http, _ProxyHTTPServer)
        return self._http.handler()

    def _dispatch(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The gateway of the config in force answers (a plain function handing on the
        gateway's coroutine: a coroutine of its own per request bought nothing)."""
        assert self._generation is not None
        return self._generation.gateway(request)

    async def reload(self) -> ReloadOutcome:
        """Read the config again and put it in force (module :mod:`proxy.http.reload`); a
        worker of ``--workers`` checks it, then has the parent reload every worker."""
        if self._reload_all is not None:
            return await self._reload_workers()
        return await self.reload_self()

    async def reload_self(self) -> ReloadOutcome:
        """Reload this process."""
        assert self._load is not None
        async with self._reloading:
            old = self._generation
            if old is None or self._stopping:
                return ReloadOutcome(problems=["the proxy is stopping"])
            try:
                settings, warnings = needs_restart(old.plan.settings, await self._load())
                plan = prepare(settings)
                new = await open_generation(plan, self._clock, self.reload, self._new_connection)
            except ConfigError as exc:
                for problem in exc.problems:
                    logger.error("reload refused, the running config stays: %s", problem)
                return ReloadOutcome(problems=exc.problems)
            except Exception as exc:  # a file that vanished, a store that cannot open...
                problem = f"the new config could not be built ({type(exc).__name__})"
                logger.error("reload refused, the running config stays: %s", problem)
                return ReloadOutcome(problems=[problem])
            assert self.port is not None
            plan.site.bound(self.port)
            kept = inherit_tokens(old.runtime, new.runtime)
            new.runtime.snapshots = old.runtime.snapshots
            new.stack.push_async_callback(self._warm_up(new.runtime))
            self._generation = new  # new requests from now on; the old finish where they are
            task = asyncio.get_running_loop().create_task(
                retire(old, old.plan.settings.server.shutdown_timeout)
            )
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        for warning in warnings:
            logger.warning("reload: %s", warning)
        logger.info(
            "reloaded: %d connector(s); kept the tokens of %s",
            len(settings.connectors),
            ", ".join(kept) or "none",
        )
        return ReloadOutcome(kept=kept, warnings=warnings)

    async def _reload_workers(self) -> ReloadOutcome:
        assert self._load is not None and self._reload_all is not None
        try:
            prepare(await self._load())  # the same checks every worker will make
        except ConfigError as exc:
            return ReloadOutcome(problems=exc.problems)
        self._reload_all()
        return ReloadOutcome(requested=True)

    async def _close_generations(self) -> None:
        if self._generation is not None:
            await self._generation.stack.aclose()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    def begin_drain(self) -> None:
        """From now on ``/ready`` answers 503 (a load balancer stops sending) and no reload
        is taken."""
        self._stopping = True
        if self._generation is not None:
            self._generation.runtime.draining = True

    def _runner(self) -> web.ServerRunner:
        limits = self.settings.server
        access = logging.getLogger(ACCESS_LOGGER) if limits.access_log else None
        handler = _ProxyHTTPServer(
            self._dispatch,
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
            access_log=access,
        )
        handler.lean = LeanListener(
            handler=self._dispatch,
            hand_over=handler.handler,
            internal_error=lambda: _closing_answer(ProxyError("internal error")),
            access=None if access is None else AccessLogger(access, ""),
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
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
            for authenticator in connector.authenticators().values():  # its clients' too
                with contextlib.suppress(ProxyError):
                    await authenticator.refresh(force=False)

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

    def _share_metrics(self, directory: Path) -> Callable[[], Awaitable[None]]:
        """Write this worker's metrics for the others every second; returns what stops it."""
        snapshots = WorkerSnapshots(directory)
        assert self.runtime is not None
        self.runtime.snapshots = snapshots  # what a scrape adds up (reloads hand it on)

        def state() -> tuple[StateOf, bool | None]:
            runtime = self.runtime
            assert runtime is not None
            store = runtime.store
            return connector_state(runtime.token_states(), time.time()), (
                None if store is None else store.health() == "ok"
            )

        task = asyncio.get_running_loop().create_task(snapshots.keep_writing(state))

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return cancel

    async def stop(self) -> None:
        async with self._reloading:  # a reload under way finishes first; none starts after
            self._stopping = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._generation = None


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (Ctrl-C, ``docker stop``)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


GC_YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Once built, stop the garbage collector scanning what lives as long as the process.

    Everything allocated at start (modules, config, runtime) moves to the permanent
    generation, and young objects are collected every 50,000 allocations instead of 700. A
    request allocates a few hundred objects and almost none in cycles, so the default
    collected every few requests, scanning them all: a tenth of a small request's time,
    measured side by side (benchmarks/README.md). Cyclic garbage still goes, a little later.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    reuse_port: bool = False,
    plan: Plan | None = None,
    metrics_dir: Path | None = None,
    load: Callable[[], Awaitable[Settings]] | None = None,
    reload_all: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then drain and close; reload the
    config (``load``) on SIGHUP."""
    warning = http_parser_warning()
    if warning:
        logger.warning("%s", warning)
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    server = ProxyServer(
        settings,
        reuse_port=reuse_port,
        plan=plan,
        metrics_dir=metrics_dir,
        load=load,
        reload_all=reload_all,
    )
    await server.start()
    settle_heap()
    reloads: set[asyncio.Task[ReloadOutcome]] = set()
    if load is not None:
        loop = asyncio.get_running_loop()

        def on_hangup() -> None:
            # This process only: a worker's parent sends SIGHUP to each worker.
            task = loop.create_task(server.reload_self())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
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
        server.begin_drain()
        if load is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await asyncio.gather(*reloads, return_exceptions=True)
        delay = server.settings.server.drain_delay
        if delay:
            logger.info("stopping: /ready answers 503 for %gs, still serving", delay)
            await asyncio.sleep(delay)
        logger.info("stopping: draining in-flight requests")
        await server.stop()
