"""Process plumbing shared by the benchmarks: ports, a tokenproxy child process, servers.

Each piece runs in its own process so the load generator, the proxy and the servers behind it
do not share an event loop (on 2 cores they still share the CPU; compare ratios, not absolutes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
