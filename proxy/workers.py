"""``tokenproxy run --workers N``: N processes serving one port, the kernel spreading clients.

The parent reserves the port with ``SO_REUSEPORT`` (so port 0 resolves once, for all), forks
the workers, which each bind that port themselves, and then only supervises: SIGTERM or
SIGINT is passed on to every worker; a worker that dies on its own stops the rest, and the
parent exits non-zero. Each worker holds its own tokens until a shared cache exists, so N
workers fetch N tokens per lifetime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from proxy.config.models import Settings

logger = logging.getLogger(__name__)

RELOAD_ALL = signal.SIGUSR1
"""What a worker sends its parent to have every worker reload."""


def reserve_port(settings: Settings) -> tuple[socket.socket, Settings]:
    """A bound, not listening, SO_REUSEPORT socket; the settings with its actual port."""
    family = socket.AF_INET6 if ":" in settings.listen.host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((settings.listen.host, settings.listen.port))
    port = reserved.getsockname()[1]
    listen = settings.listen.model_copy(update={"port": port})
    return reserved, settings.model_copy(update={"listen": listen})


def run_workers(settings: Settings, workers: int, serve: Callable[[Settings], int]) -> int:
    """Fork ``workers`` processes running ``serve(settings)``; return the exit status."""
    reserved, settings = reserve_port(settings)
    children: set[int] = set()
    # Until every worker serves, a reload has nothing to reload: ignored, never fatal.
    for sig in (signal.SIGHUP, RELOAD_ALL):
        signal.signal(sig, signal.SIG_IGN)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve takes SIGHUP (reload) once it can
            reserved.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = serve(settings)
            finally:
                os._exit(code)  # never back into the parent's code (its clean-up is its own)
        children.add(pid)
    reserved.close()

    stopping = False

    def stop_all(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(child, signal.SIGTERM)

    def reload_all(signum: int, frame: object) -> None:
        if stopping:
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGHUP)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_all)
    for sig in (signal.SIGHUP, RELOAD_ALL):
        signal.signal(sig, reload_all)
    status = 0
    while children:
        pid, code = os.waitpid(-1, 0)
        children.discard(pid)
        if os.waitstatus_to_exitcode(code) != 0 or not stopping:
            if not stopping:
                logger.error("worker %d exited on its own; stopping the others", pid)
                stop_all(signal.SIGTERM, None)
            status = 1
    return status
