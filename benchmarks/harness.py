"""Process plumbing shared by the benchmarks: ports, a tokenproxy child process, servers.

Each piece runs in its own process so the load generator, the proxy and the servers behind it
do not share an event loop (on 2 cores they still share the CPU; compare ratios, not absolutes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROXY_CPU, LOAD_CPU = 0, 1
"""Where a single-worker proxy runs, and where the load and the upstream run (issue 17's
set-up: a proxy never competes with its own load for a core)."""


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def family(pid: int) -> set[int]:
    """``pid`` and all its descendants (the workers of ``--workers``, nginx's worker)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    members, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in members} - members
        members |= more
        grew = bool(more)
    return members


def pin(pid: int, cpus: set[int]) -> None:
    """Run ``pid`` and its descendants on ``cpus`` only."""
    for member in family(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(member, cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far."""
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def child_process(target: Callable[..., None], *args: object, port: int) -> Iterator[None]:
    """Run ``target(*args)`` in a spawned process until the block ends; wait for ``port``."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    try:
        wait_for_port(port)
        yield
    finally:
        process.terminate()
        process.join(5)


@contextlib.contextmanager
def tokenproxy(
    port: int, connectors_yaml: str, *, workers: int = 1, extra_yaml: str = ""
) -> Iterator[subprocess.Popen[bytes]]:
    """``tokenproxy run`` with the given ``connectors:`` block (and top-level ``extra_yaml``,
    such as a ``cache:`` block), access log off, state in a temporary directory, until done."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            "server: {access_log: false}\n"
            f"{extra_yaml}"
            f"connectors:\n{connectors_yaml}"
        )
        command = [sys.executable, "-m", "proxy", "run", "-c", str(config)]
        command += ["--log-level", "warning", "--workers", str(workers)]
        process = subprocess.Popen(command, cwd=REPO)
        try:
            wait_for_port(port)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)


def serve_forever(handler_factory: Callable[[], object], port: int) -> None:
    """Serve an aiohttp low-level handler on loopback ``port`` (run in a child process)."""
    import asyncio

    from aiohttp import web

    async def main() -> None:
        runner = web.ServerRunner(web.Server(handler_factory(), access_log=None))  # type: ignore[arg-type]
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
