"""``tokenproxy run --workers N``: N processes serving one port, the kernel spreading clients.

Standard library only: the supervising parent (:mod:`proxy.supervisor`) never imports the
server stack. It reserves the port with ``SO_REUSEPORT`` (so port 0 resolves once, for
all), forks the workers, which each bind that port themselves, and then only supervises:
SIGTERM or SIGINT is passed on to every worker, SIGHUP (and a worker's SIGUSR1) becomes a
SIGHUP to each; a worker that dies on its own stops the rest, and the parent exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

logger = logging.getLogger(__name__)

RELOAD_ALL = signal.SIGUSR1
"""What a worker sends its parent to have every worker reload."""


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound, not listening, SO_REUSEPORT socket, and its actual port (for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    return reserved, reserved.getsockname()[1]


def run_workers(host: str, port: int, workers: int, serve: Callable[[int], int]) -> int:
    """Fork ``workers`` processes running ``serve(port)`` on the reserved ``port``; return
    the exit status."""
    reserved, port = reserve_port(host, port)
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
                code = serve(port)
            finally:
                flush_and_exit(code)
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


def flush_and_exit(code: int) -> NoReturn:
    """End a forked child now, never back into the parent's code (its clean-up is its own),
    with what it printed written out first (``os._exit`` flushes nothing), the access
    log's pending lines too."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
