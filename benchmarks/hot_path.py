"""The proxy's own work per small request, sockets stubbed out: where a request's CPU goes.

    .venv/bin/python benchmarks/hot_path.py                 # us per request, three layers
    .venv/bin/python benchmarks/hot_path.py --instructions  # the same under valgrind: counts
    .venv/bin/python benchmarks/hot_path.py --smoke         # seconds; what the tests run

A real ``ProxyServer`` (static credential, access log off) gets ``GET /bench/small`` on a lean
connection whose transport only counts bytes; the connector's upstream pool holds one
connection whose transport answers every request written to it with a canned ~100-byte nginx
answer, fed to the real client's connection protocol (its parser, its checks) when the loop
next runs. No syscall, no other process: what is left is Python, in three layers, each
measured with the ones below it stubbed:

- ``server``: the lean connection (parse, request object, task, answer encoding);
- ``+ gateway``: the checks, routing, request id, metrics (forwarding answers at once);
- ``+ forwarding``: headers both ways, credential, retries, read deadline, the upstream
  client (the request's head, the pool, the answer's parsing).

Wall-clock figures drift with the machine; ``--instructions`` runs each layer twice under
``valgrind --tool=callgrind`` and prints instructions per request (the difference between
runs of 500 and 2,500 requests), which is the same run after run: use it to judge a change
to the hot path (needs valgrind: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

import proxy.http.gateway as gateway
from proxy.config.loader import load_settings
from proxy.egress.http1.connection import UpstreamConnection
from proxy.http.server import ProxyServer, settle_heap

LAYERS = ("server", "+ gateway", "+ forwarding")
REQUEST = b"GET /bench/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 14:45:27 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 100
)
CONFIG = """listen: {host: 127.0.0.1, port: 0}
server: {access_log: false}
connectors:
  bench: {route: /bench, upstream: "http://127.0.0.1:9", auth: {type: static, token: t}}
"""


class CountingTransport:
    """What the lean connection writes to: counts bytes, never closes on its own."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def close(self) -> None:
        raise AssertionError("the benchmark's connection closed")

    def set_protocol(self, protocol: Any) -> None:
        raise AssertionError("the benchmark's request was handed to aiohttp")


class UpstreamTransport(CountingTransport):
    """The upstream's side of a pooled connection: every request written to it is answered
    with the canned answer once the loop runs again, as a socket's next read would be."""

    def __init__(self, connection: UpstreamConnection) -> None:
        super().__init__()
        self._connection = connection

    def write(self, data: bytes) -> None:
        super().write(data)
        asyncio.get_running_loop().call_soon(self._connection.data_received, ANSWER)

    def abort(self) -> None:
        """The pool closing at the end of the run (a failed exchange would close instead)."""


def _small_answer() -> web.Response:
    return web.Response(body=b"x" * 100, headers={"Server": "nginx", "Content-Type": "text/plain"})


async def serve(layer: str, warm: int, rounds: int, count: int) -> list[float]:
    """``rounds`` times ``count`` requests on one connection; us per request for each round."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(CONFIG)
        settings = load_settings(path).settings
    server = ProxyServer(settings)
    await server.start()
    settle_heap()

    async def answered(*_: Any) -> web.StreamResponse:
        return _small_answer()

    assert server.runtime is not None
    loop = asyncio.get_running_loop()
    (connector,) = server.runtime.connectors.values()
    assert connector.upstream.http1 is not None
    pool = connector.upstream.http1.pool
    upstream = UpstreamConnection(loop)
    upstream.connection_made(UpstreamTransport(upstream))  # type: ignore[arg-type]
    upstream.idle_since = time.monotonic()
    pool._idle.append(upstream)  # the pool's one connection
    listener = server._http.lean  # type: ignore[union-attr]
    original_forward = gateway.forward
    if layer == "server":
        listener.handler = answered
    elif layer == "+ gateway":
        gateway.forward = answered  # type: ignore[assignment]
    connection = listener()
    connection.connection_made(CountingTransport())

    async def run(requests: int) -> None:
        for _ in range(requests):
            connection.data_received(REQUEST)
            await connection._answering

    try:
        await run(warm)
        results = []
        for _ in range(rounds):
            started = time.perf_counter()
            await run(count)
            results.append((time.perf_counter() - started) / count * 1e6)
        # Every request went over the one pooled connection, and left it reusable.
        assert list(pool._idle) == [upstream], "the upstream connection was not kept"
        return results
    finally:
        gateway.forward = original_forward
        connection.transport = None  # nothing to close: the transport is ours
        await server.stop()


def instructions(layer: str) -> int | None:
    """Instructions per request of ``layer`` under callgrind (None without valgrind)."""
    if shutil.which("valgrind") is None:
        return None
    counts = []
    for requests in (500, 2500):
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--count",
                str(requests),
                "--layer",
                layer,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
        )
        counts.append(int(re.findall(r"Collected : (\d+)", result.stderr)[-1]))
    return (counts[1] - counts[0]) // 2000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", action="store_true", help="counts, under valgrind")
    parser.add_argument("--smoke", action="store_true", help="a few hundred requests")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)  # one callgrind run
    parser.add_argument("--layer", default="+ forwarding", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is not None:
        uvloop.run(serve(args.layer, args.count, 0, 1))
        return 0
    warm, rounds, count = (100, 1, 200) if args.smoke else (2_000, 5, 20_000)
    print("| layer | us per request (min of rounds) | instructions per request |")
    print("|---|---|---|")
    for layer in LAYERS:
        best = min(uvloop.run(serve(layer, warm, rounds, count)))
        counted = instructions(layer) if args.instructions else None
        shown = f"{counted:,}" if counted is not None else "-"
        print(f"| {layer} | {best:.1f} | {shown} |")
    if args.instructions and shutil.which("valgrind") is None:
        print("valgrind not found: no instruction counts (apt-get install valgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
