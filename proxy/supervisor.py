"""The parent of ``tokenproxy run --workers N``: it supervises and imports nothing else.

The server stack (aiohttp, uvloop, the proxy's modules) costs a process some 30 MB, and a
parent that only forks and forwards signals needs none of it. So the config is checked in a child
of its own (problems and warnings printed as ``run`` prints them, exit status 2 on a bad
config), which tells the parent where to listen and exits; the parent reserves the port and
forks the workers, each of which loads (through the validator process,
:mod:`proxy.config.handoff`) and builds the config itself. What a worker does is
:func:`proxy.cli.serve_worker`; the forking and signals are :mod:`proxy.workers`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from pathlib import Path

from proxy.workers import RELOAD_ALL, flush_and_exit, run_workers


def supervise(args: argparse.Namespace) -> int:
    """Run ``args`` (``run --workers N``, N > 1); the exit status."""
    for sig in (signal.SIGHUP, RELOAD_ALL):  # nothing to reload yet
        signal.signal(sig, signal.SIG_IGN)
    listen = _checked_listen(args)
    if isinstance(listen, int):
        return listen
    host, port = listen
    # Where the workers' metrics meet, so that one scrape covers them all.
    metrics_dir = Path(tempfile.mkdtemp(prefix="tokenproxy-metrics-"))

    def worker(reserved: int) -> int:
        from proxy.cli import serve_worker  # the stack: in the worker only

        return serve_worker(args, reserved, metrics_dir)

    try:
        return run_workers(host, port, args.workers, worker)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _checked_listen(args: argparse.Namespace) -> tuple[str, int] | int:
    """(host, port) from a child that checked the config; or its exit status."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 2
        try:
            from proxy.cli import listen_of_run

            found = listen_of_run(args)
            if isinstance(found, int):
                code = found
            else:
                os.write(write_end, f"{found[0]}\n{found[1]}".encode())
                code = 0
        finally:
            flush_and_exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or "\n" not in said:
        return code or 2
    host, port = said.split("\n", 1)
    return host, int(port)
