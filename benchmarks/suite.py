"""tokenproxy side by side with nginx, a minimal aiohttp proxy and no proxy at all.

    .venv/bin/python benchmarks/suite.py            # 3 interleaved rounds x 5 s per cell (~6 min)
    .venv/bin/python benchmarks/suite.py --quick    # 1 round x 2 s
    .venv/bin/python benchmarks/suite.py --smoke    # seconds; what the tests run

An nginx upstream on loopback serves ~100-byte and 64 KiB answers. Measured against it, for
each size and for 8 and 64 connections: direct; nginx as a proxy adding a static
Authorization header; the minimal aiohttp proxy (benchmarks/minimal_proxy.py); tokenproxy
with 1 worker; tokenproxy with --workers 2. Rounds interleave the targets, so drift on a
shared machine hits all alike: compare ratios, not absolute numbers. It prints req/s, p50,
p99, the CPU time each proxy spent per request and RSS (idle and loaded, all processes of a
target) and writes JSON and Markdown to benchmarks/results/.

With two CPUs or more it pins as issue 17 sets up its measurements: each single-process
proxy (nginx, the minimal proxy, tokenproxy x1) alone on CPU 0; wrk, the upstream and the
paced load of the latency rows on CPU 1; --workers 2 on both. On a two-core machine that
leaves --workers 2 only what wrk and the upstream do not take, so the goal table's context
line also gives how many cores it had and what it served per core.

nginx and wrk come from Debian packages: when missing they are installed if we are root
(apt-get), otherwise the suite says how. Without wrk it uses a slower built-in load generator
and says so; without nginx it uses an aiohttp upstream and skips the nginx proxy row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web
from harness import (
    LOAD_CPU,
    PROXY_CPU,
    REPO,
    can_pin,
    child_process,
    cpu_seconds,
    family,
    free_port,
    pin,
    serve_forever,
    tokenproxy,
    wait_for_port,
)
from proxy_vs_direct import Sample, _paced_load, measure

RESULTS = Path(__file__).resolve().parent / "results"
PACED_RATE = 400  # req/s in all over 8 connections: latency without queueing
SMALL = b"x" * 100
LARGE_SIZE = 64 * 1024


@dataclass
class Cell:
    target: str
    size: str
    connections: int
    samples: list[Sample] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    """The proxy's CPU time per request, user + system, all its processes."""
    cores: list[float] = field(default_factory=list)
    """The proxy's CPU time per second of load: how many cores it had."""

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.samples)


def ensure_tools(smoke: bool) -> tuple[bool, bool]:
    """(nginx available, wrk available), installing them when we can and should."""
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing and not smoke and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], capture_output=True, check=False)
        if any(shutil.which(t) is None for t in missing):
            subprocess.run(["apt-get", "update"], capture_output=True, check=False)
            subprocess.run(["apt-get", "install", "-y", *missing], capture_output=True, check=False)
    nginx, wrk = shutil.which("nginx") is not None, shutil.which("wrk") is not None
    if not nginx:
        print("nginx not found (apt-get install -y nginx): aiohttp upstream, no nginx proxy row")
    if not wrk:
        print("wrk not found (apt-get install -y wrk): using the slower built-in load generator")
    return nginx, wrk


@contextlib.contextmanager
def nginx(config: str) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryDirectory() as prefix:
        os.chmod(prefix, 0o755)  # workers run as nobody
        Path(prefix, "large.bin").write_bytes(os.urandom(LARGE_SIZE))
        Path(prefix, "nginx.conf").write_text(config.replace("PREFIX", prefix))
        process = subprocess.Popen(
            ["nginx", "-p", prefix, "-c", "nginx.conf", "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(10)


NGINX_COMMON = """
worker_processes 1;
pid PREFIX/nginx-{port}.pid;
error_log /dev/null crit;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path PREFIX/body; proxy_temp_path PREFIX/proxy;
  fastcgi_temp_path PREFIX/fcgi; uwsgi_temp_path PREFIX/uwsgi; scgi_temp_path PREFIX/scgi;
  keepalive_requests 1000000;
  {body}
}}
"""


def upstream_config(port: int) -> str:
    return NGINX_COMMON.format(
        port=port,
        body=f"""server {{ listen 127.0.0.1:{port}; root PREFIX;
          location /small {{ default_type application/json; return 200 '{SMALL.decode()}'; }}
          location /large {{ try_files /large.bin =404; }} }}""",
    )


def proxy_config(port: int, upstream: int) -> str:
    return NGINX_COMMON.format(
        port=port,
        body=f"""upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
          server {{ listen 127.0.0.1:{port};
            location / {{ proxy_pass http://up; proxy_http_version 1.1;
              proxy_set_header Connection ""; proxy_buffering off;
              proxy_set_header Authorization "Bearer static-token"; }} }}""",
    )


@contextlib.contextmanager
def process(command: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    # Its stderr is aiohttp's noise when wrk hangs up mid-response.
    child = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield child
    finally:
        child.terminate()
        child.wait(10)


def rss_mb(pid: int, *, alone: bool = False) -> float:
    """Resident memory of ``pid`` and all its descendants (workers), in MB; ``alone``:
    of ``pid`` only (the supervising parent of ``--workers``)."""
    return sum(_vm_rss_kb(member) for member in ({pid} if alone else family(pid))) / 1024


def _vm_rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, StopIteration):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--quick", action="store_true", help="1 round x 2 s")
    parser.add_argument("--smoke", action="store_true", help="seconds, small answers only (CI)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    sizes, connections = ["small", "64KiB"], [8, 64]
    if args.smoke:
        args.rounds, args.seconds, sizes, connections = 1, 0.5, ["small"], [8]
    have_nginx, have_wrk = ensure_tools(args.smoke)
    pinned = can_pin()
    every_cpu = os.sched_getaffinity(0) if pinned else set()
    if pinned:  # this script (the paced load), wrk and the upstream: CPU 1
        os.sched_setaffinity(0, {LOAD_CPU})
    else:
        print("fewer than two CPUs: nothing pinned, proxies share the CPU with the load")
    ports = {name: free_port() for name in ("up", "nginx", "minimal", "tp1", "tp2")}
    bench_connector = (
        "  bench:\n    route: /bench\n"
        f"    upstream: http://127.0.0.1:{ports['up']}\n"
        "    auth: {type: static, token: bench-token}\n"
    )
    targets = {
        "direct": f"http://127.0.0.1:{ports['up']}",
        "nginx proxy": f"http://127.0.0.1:{ports['nginx']}",
        "minimal aiohttp": f"http://127.0.0.1:{ports['minimal']}",
        "tokenproxy x1": f"http://127.0.0.1:{ports['tp1']}/bench",
        "tokenproxy x2": f"http://127.0.0.1:{ports['tp2']}/bench",
    }
    if not have_nginx:
        del targets["nginx proxy"]
    paths = {"small": "/small", "64KiB": "/large"}
    cells = {(t, s, c): Cell(t, s, c) for t in targets for s in sizes for c in connections}
    with contextlib.ExitStack() as stack:
        proxies: dict[str, int] = {}  # the targets whose CPU time is counted
        if have_nginx:
            stack.enter_context(nginx(upstream_config(ports["up"])))
            wait_for_port(ports["up"])
            proxy = stack.enter_context(nginx(proxy_config(ports["nginx"], ports["up"])))
            wait_for_port(ports["nginx"])
            proxies["nginx proxy"] = proxy.pid
        else:
            stack.enter_context(
                child_process(serve_forever, sized_answers, ports["up"], port=ports["up"])
            )
        baseline = [sys.executable, str(REPO / "benchmarks/minimal_proxy.py")]
        baseline += [str(ports["minimal"]), targets["direct"]]
        proxies["minimal aiohttp"] = stack.enter_context(process(baseline, ports["minimal"])).pid
        for name, workers in (("tokenproxy x1", 1), ("tokenproxy x2", 2)):
            port = ports[f"tp{workers}"]
            started = stack.enter_context(tokenproxy(port, bench_connector, workers=workers))
            proxies[name] = started.pid
        if pinned:  # one worker alone on CPU 0; --workers 2 on both cores
            for name, pid in proxies.items():
                pin(pid, every_cpu if name == "tokenproxy x2" else {PROXY_CPU})
        pids = {name: pid for name, pid in proxies.items() if name != "nginx proxy"}
        idle = {name: rss_mb(pid) for name, pid in pids.items()}
        idle["x2 parent"] = rss_mb(pids["tokenproxy x2"], alone=True)
        for base in targets.values():  # warm-up: connections, caches
            measure(base + paths[sizes[0]], connections[0], 0.5, have_wrk)
        for _ in range(args.rounds):
            for size in sizes:
                for conns in connections:
                    for target, base in targets.items():
                        cell = cells[(target, size, conns)]
                        before = cpu_seconds(proxies[target]) if target in proxies else 0.0
                        sample = measure(base + paths[size], conns, args.seconds, have_wrk)
                        cell.samples.append(sample)
                        if target in proxies:
                            spent = cpu_seconds(proxies[target]) - before
                            seconds = max(1, round(args.seconds))  # wrk's whole seconds
                            cell.cores.append(spent / seconds)
                            cell.cpu_us.append(spent / (sample.rps * seconds) * 1e6)
        loaded = {name: rss_mb(pid) for name, pid in pids.items()}
        loaded["x2 parent"] = rss_mb(pids["tokenproxy x2"], alone=True)
        # nginx and the minimal proxy too: what a proxy in C and one in Python that only
        # copies add here (the hop, two more wake-ups, and their own work).
        measured = ("direct", "nginx proxy", "minimal aiohttp", "tokenproxy x1")
        paced: dict[str, list[Sample]] = {name: [] for name in measured if name in targets}
        for _ in range(args.rounds):  # added latency at low load, interleaved too
            for target in paced:
                url = targets[target] + paths["small"]
                sample = asyncio.run(_paced_load(url, 8, args.seconds, PACED_RATE))
                paced[target].append(sample)
    report(cells, targets, sizes, connections, idle, loaded, args, have_wrk, pinned)
    report_goals(cells, idle, loaded, paced, sizes, connections)
    return 0


def sized_answers() -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    """The upstream when nginx is missing: /large is 64 KiB, anything else ~100 bytes."""
    large = os.urandom(LARGE_SIZE)

    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(body=large if request.path == "/large" else SMALL)

    return handle


def report(
    cells: dict[tuple[str, str, int], Cell],
    targets: dict[str, str],
    sizes: list[str],
    connections: list[int],
    idle: dict[str, float],
    loaded: dict[str, float],
    args: argparse.Namespace,
    wrk: bool,
    pinned: bool,
) -> None:
    where = (
        f"single-worker proxies on CPU {PROXY_CPU}, --workers 2 on both, load and upstream "
        f"on CPU {LOAD_CPU}"
        if pinned
        else "nothing pinned: every target shares the CPU with the load"
    )
    lines = [
        f"{args.rounds} interleaved rounds x {args.seconds:g} s per cell, load by "
        f"{'wrk' if wrk else 'the built-in generator'}, medians; {where}.",
        "",
        "| size | conns | target | req/s | p50 ms | p99 ms | vs direct | vs nginx proxy "
        "| CPU us/req (cores) | RSS idle/loaded MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for size in sizes:
        for conns in connections:
            direct = cells[("direct", size, conns)].median("rps")
            nginx_rps = cells.get(("nginx proxy", size, conns))
            for target in targets:
                cell = cells[(target, size, conns)]
                rps = cell.median("rps")
                versus_nginx = f"{rps / nginx_rps.median('rps'):.2f}" if nginx_rps else "-"
                memory = f"{idle[target]:.0f} / {loaded[target]:.0f}" if target in idle else "-"
                p50, p99 = cell.median("p50_ms"), cell.median("p99_ms")
                cpu = "-"
                if cell.cpu_us:
                    cores = statistics.median(cell.cores)
                    cpu = f"{statistics.median(cell.cpu_us):.0f} ({cores:.2f})"
                lines.append(
                    f"| {size} | {conns} | {target} | {rps:.0f} | {p50:.2f} | {p99:.2f} | "
                    f"{rps / direct:.2f} | {versus_nginx} | {cpu} | {memory} |"
                )
                memory_mb = {"rss_idle_mb": idle.get(target), "rss_loaded_mb": loaded.get(target)}
                rows.append({**asdict(cell), "rps": rps, **memory_mb})
    text = "\n".join(lines)
    print("\n" + text)
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (RESULTS / f"suite-{stamp}.md").write_text(text + "\n")
        (RESULTS / f"suite-{stamp}.json").write_text(json.dumps(rows, indent=2))
        print(f"\nwritten: benchmarks/results/suite-{stamp}.md and .json")


def report_goals(
    cells: dict[tuple[str, str, int], Cell],
    idle: dict[str, float],
    loaded: dict[str, float],
    paced: dict[str, list[Sample]],
    sizes: list[str],
    connections: list[int],
) -> None:
    """Issue 17's goals, each measured in this run, with the value reached."""

    def ratio(size: str, conns: int, target: str, base: str) -> float | None:
        if (target, size, conns) not in cells or (base, size, conns) not in cells:
            return None
        return cells[(target, size, conns)].median("rps") / cells[(base, size, conns)].median("rps")

    def added(name: str, target: str = "tokenproxy x1") -> float:
        return statistics.median(getattr(s, name) for s in paced[target]) - (
            statistics.median(getattr(s, name) for s in paced["direct"])
        )

    conns = max(connections)
    goals = [
        (f"x1 / minimal, small, {conns} conns", ratio("small", conns, "tokenproxy x1",
         "minimal aiohttp"), ">=", 1.67),
        (f"x1 / minimal, 64 KiB, {conns} conns", ratio("64KiB", conns, "tokenproxy x1",
         "minimal aiohttp") if "64KiB" in sizes else None, ">=", 1.3),
        (f"x2 / x1, small, {conns} conns", ratio("small", conns, "tokenproxy x2",
         "tokenproxy x1"), ">=", 1.8),
        (f"added p50 ms, paced {PACED_RATE} req/s, 8 conns", added("p50_ms"), "<", 0.3),
        (f"added p99 ms, paced {PACED_RATE} req/s, 8 conns", added("p99_ms"), "<", 1.0),
        ("RSS of a worker, idle MB", idle["tokenproxy x1"], "<", 45),
        ("RSS of a worker, loaded MB", loaded["tokenproxy x1"], "<", 60),
        ("RSS of the --workers parent, idle MB", idle["x2 parent"], "<", 20),
    ]  # fmt: skip
    lines = ["", "| goal (issue 17) | measured | wanted | met |", "|---|---|---|---|"]
    for name, value, sense, wanted in goals:
        if value is None:
            lines.append(f"| {name} | - | {sense} {wanted:g} | - |")
            continue
        met = value >= wanted if sense == ">=" else value < wanted
        lines.append(f"| {name} | {value:.2f} | {sense} {wanted:g} | {'yes' if met else 'no'} |")
    lines += context(cells, conns)
    others = [name for name in ("nginx proxy", "minimal aiohttp") if name in paced]
    lines.append(
        f"At a paced {PACED_RATE} req/s, over direct: "
        + "; ".join(
            f"{name} adds p50 {added('p50_ms', name):.2f} ms, p99 {added('p99_ms', name):.2f} ms"
            for name in others
        )
        + "."
    )
    print("\n".join(lines))


def context(cells: dict[tuple[str, str, int], Cell], conns: int) -> list[str]:
    """What the goal rows rest on: CPU per request (the figure that drifts least), and how
    many cores ``--workers 2`` actually had while wrk and the upstream shared the machine."""
    one, two = cells[("tokenproxy x1", "small", conns)], cells[("tokenproxy x2", "small", conns)]
    minimal = cells[("minimal aiohttp", "small", conns)]
    if not (one.cpu_us and two.cpu_us and minimal.cpu_us):
        return []
    cores = statistics.median(two.cores)
    per_core = (two.median("rps") / cores) / (one.median("rps") / statistics.median(one.cores))
    return [
        "",
        f"Context, small answers, {conns} conns: CPU per request, minimal aiohttp "
        f"{statistics.median(minimal.cpu_us):.0f} us, tokenproxy x1 "
        f"{statistics.median(one.cpu_us):.0f} us, x2 {statistics.median(two.cpu_us):.0f} us. "
        f"--workers 2 had {cores:.2f} of the machine's cores (wrk and the upstream took the "
        f"rest) and served {per_core:.2f}x x1's requests per core used: "
        f"{2 * per_core:.2f}x x1 on two free cores.",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
