"""Small GETs through tokenproxy vs straight to the same upstream, measured side by side.

    .venv/bin/python benchmarks/proxy_vs_direct.py            # 5 interleaved rounds of 5 s
    .venv/bin/python benchmarks/proxy_vs_direct.py --smoke    # seconds; for CI, no numbers kept

The upstream (aiohttp, ~100-byte answers) and the proxy each run in their own process. Load
comes from wrk when installed (``apt-get install -y wrk``), else from a built-in aiohttp load
generator, which is slower than wrk and says so. Rounds alternate direct and proxy so drift
on a shared machine hits both alike; the table gives medians and the proxy/direct ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from harness import child_process, free_port, serve_forever, tokenproxy

BODY = b'{"id": 1, "name": "benchmark", "items": [1, 2, 3], "padding": "xxxxxxxxxxxxxxxxxxxx"}\n'


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float


def small_json_server() -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    return handle


def run_wrk(url: str, connections: int, seconds: float) -> Sample:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return Sample(float(rps.group(1)), latency("50"), latency("99"))


async def _builtin_load(url: str, connections: int, seconds: float) -> Sample:
    import aiohttp

    latencies: list[float] = []
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < end:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    pick = latencies.__getitem__
    return Sample(
        len(latencies) / seconds,
        pick(len(latencies) // 2) * 1000,
        pick(min(len(latencies) - 1, int(len(latencies) * 0.99))) * 1000,
    )


async def _paced_load(url: str, connections: int, seconds: float, rate: float) -> Sample:
    """``rate`` requests a second in all, over ``connections`` clients: latency without queueing."""
    import aiohttp

    latencies: list[float] = []
    interval = connections / rate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def client(offset: float) -> None:
            await asyncio.sleep(offset)
            next_at = time.perf_counter()
            end = next_at + seconds
            while next_at < end:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        await asyncio.gather(*(client(i * interval / connections) for i in range(connections)))
    latencies.sort()
    return Sample(
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )


def measure(url: str, connections: int, seconds: float, use_wrk: bool) -> Sample:
    if use_wrk:
        return run_wrk(url, connections, seconds)
    return asyncio.run(_builtin_load(url, connections, seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="one short round (CI)")
    parser.add_argument(
        "--rate", type=float, help="paced: this many req/s in all (latency without queueing)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.connections = 1, 1, 4
    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        print("wrk not found (apt-get install -y wrk): using the slower built-in load generator")

    upstream_port, proxy_port = free_port(), free_port()
    urls = {
        "direct": f"http://127.0.0.1:{upstream_port}/items/1",
        "tokenproxy": f"http://127.0.0.1:{proxy_port}/bench/items/1",
    }
    samples: dict[str, list[Sample]] = {name: [] for name in urls}
    connectors = (
        "  bench:\n"
        "    route: /bench\n"
        f"    upstream: http://127.0.0.1:{upstream_port}\n"
        "    auth: {type: static, token: bench-token}\n"
    )
    with (
        child_process(serve_forever, small_json_server, upstream_port, port=upstream_port),
        tokenproxy(proxy_port, connectors),
    ):
        measure(urls["tokenproxy"], args.connections, min(args.seconds, 1), use_wrk)  # warm-up
        for _ in range(args.rounds):
            for name, url in urls.items():
                if args.rate:
                    sample = asyncio.run(
                        _paced_load(url, args.connections, args.seconds, args.rate)
                    )
                else:
                    sample = measure(url, args.connections, args.seconds, use_wrk)
                samples[name].append(sample)

    tool = (
        f"paced built-in at {args.rate:g} req/s" if args.rate else "wrk" if use_wrk else "built-in"
    )
    print(
        f"\n{args.rounds} interleaved rounds x {args.seconds:g}s, {args.connections} connections, "
        f"{len(BODY)}-byte responses, load by {tool}, medians:"
    )
    print(f"{'target':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    medians = {}
    for name, runs in samples.items():
        medians[name] = Sample(
            statistics.median(s.rps for s in runs),
            statistics.median(s.p50_ms for s in runs),
            statistics.median(s.p99_ms for s in runs),
        )
        m = medians[name]
        print(f"{name:<12}{m.rps:>10.0f}{m.p50_ms:>10.2f}{m.p99_ms:>10.2f}")
    direct, proxy = medians["direct"], medians["tokenproxy"]
    print(
        f"tokenproxy/direct throughput: {proxy.rps / direct.rps:.2f}; "
        f"added p50 latency: {proxy.p50_ms - direct.p50_ms:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
