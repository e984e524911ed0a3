"""One worker per proxy, pinned: what one core of tokenproxy does next to the minimal proxy.

    .venv/bin/python benchmarks/pinned.py            # 5 interleaved rounds x 5 s per cell
    .venv/bin/python benchmarks/pinned.py --smoke    # seconds; what the tests run

The proxies run one at a time on CPU 0; the nginx upstream and wrk share CPU 1, so a proxy
never competes with its own load. For each answer size (~100 B, 64 KiB) and connection count
(8, 64): req/s (median of interleaved rounds), the ratio to the minimal aiohttp proxy
(benchmarks/minimal_proxy.py) in the same run, and the CPU time each proxy spent per request
(user + system, from /proc): the figure that drifts least on a shared machine.

Needs two CPUs, nginx and wrk (suite.py installs them); with fewer it still runs, unpinned,
and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

from harness import (
    LOAD_CPU,
    PROXY_CPU,
    REPO,
    can_pin,
    child_process,
    cpu_seconds,
    free_port,
    serve_forever,
    tokenproxy,
    wait_for_port,
)
from proxy_vs_direct import measure
from suite import ensure_tools, nginx, process, rss_mb, sized_answers, upstream_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--smoke", action="store_true", help="seconds, small answers only (CI)")
    args = parser.parse_args()
    sizes, connections = {"small": "/small", "64KiB": "/large"}, [8, 64]
    if args.smoke:
        args.rounds, args.seconds, sizes, connections = 1, 1, {"small": "/small"}, [8]
    have_nginx, have_wrk = ensure_tools(args.smoke)
    pinned = can_pin()
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})  # this script, wrk and nginx: CPU 1
    else:
        print("fewer than two CPUs: nothing pinned, proxies share the CPU with the load")
    ports = {name: free_port() for name in ("up", "minimal", "tokenproxy")}
    upstream = f"http://127.0.0.1:{ports['up']}"
    with contextlib.ExitStack() as stack:
        if have_nginx:
            stack.enter_context(nginx(upstream_config(ports["up"])))
            wait_for_port(ports["up"])
        else:
            stack.enter_context(
                child_process(serve_forever, sized_answers, ports["up"], port=ports["up"])
            )
        pin = ["taskset", "-c", str(PROXY_CPU)] if pinned else []
        minimal = [*pin, sys.executable, str(REPO / "benchmarks/minimal_proxy.py")]
        pids = {
            "minimal aiohttp": stack.enter_context(
                process([*minimal, str(ports["minimal"]), upstream], ports["minimal"])
            ).pid
        }
        connector = (
            f"  bench:\n    route: /bench\n    upstream: {upstream}\n"
            "    auth: {type: static, token: bench-token}\n"
        )
        tp = stack.enter_context(tokenproxy(ports["tokenproxy"], connector))
        if pinned:
            os.sched_setaffinity(tp.pid, {PROXY_CPU})
        pids["tokenproxy"] = tp.pid
        bases = {
            "minimal aiohttp": f"http://127.0.0.1:{ports['minimal']}",
            "tokenproxy": f"http://127.0.0.1:{ports['tokenproxy']}/bench",
        }
        for base in bases.values():  # warm-up: connections, caches
            measure(base + "/small", 8, 0.5, have_wrk)
        rates: dict[tuple[str, str, int], list[float]] = {}
        cpu: dict[tuple[str, str, int], list[float]] = {}
        for _ in range(args.rounds):
            for size, path in sizes.items():
                for conns in connections:
                    for name, base in bases.items():
                        before = cpu_seconds(pids[name])
                        sample = measure(base + path, conns, args.seconds, have_wrk)
                        spent = cpu_seconds(pids[name]) - before
                        requests = sample.rps * max(1, round(args.seconds))
                        rates.setdefault((name, size, conns), []).append(sample.rps)
                        cpu.setdefault((name, size, conns), []).append(spent / requests * 1e6)
        rss = {name: rss_mb(pid) for name, pid in pids.items()}
    print(f"\n{args.rounds} interleaved rounds x {args.seconds:g} s, proxies on CPU {PROXY_CPU}")
    print("| size | conns | proxy | req/s | x minimal | CPU us/request | RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for conns in connections:
            base = statistics.median(rates[("minimal aiohttp", size, conns)])
            for name in bases:
                rate = statistics.median(rates[(name, size, conns)])
                per = statistics.median(cpu[(name, size, conns)])
                print(
                    f"| {size} | {conns} | {name} | {rate:.0f} | {rate / base:.2f} "
                    f"| {per:.0f} | {rss[name]:.0f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
