"""Soak: load with random identity-provider and upstream faults, for minutes; memory, open
file descriptors and asyncio tasks must stay flat.

    .venv/bin/python benchmarks/soak.py                # 120 s
    .venv/bin/python benchmarks/soak.py --seconds 600
    .venv/bin/python benchmarks/soak.py --smoke        # 6 s (the tests run this)

The proxy, a faulty identity provider, a faulty upstream and the clients share this process
(so tasks can be counted). Tokens live 2 to 5 s, so renewals never stop. Faults, at random:
the provider answers 503, garbage, 400 or after 2 s; the upstream answers 401, after 1 s, a
256 KiB stream, or resets mid-body; clients give up early. Printed: a sample per tenth of the
run, then the growth from the first sample after warm-up to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.config.loader import validate
from proxy.config.models import Settings
from proxy.http.server import ProxyServer

RNG = random.Random(20261201)


async def faulty_idp(request: web.BaseRequest) -> web.StreamResponse:
    await request.read()
    roll = RNG.random()
    if roll < 0.06:
        return web.Response(status=503, text="busy")
    if roll < 0.09:
        return web.Response(text="<html>login</html>", content_type="text/html")
    if roll < 0.11:
        return web.json_response({"error": "invalid_client"}, status=400)
    if roll < 0.13:
        await asyncio.sleep(2)
    token = {"access_token": f"at-{RNG.getrandbits(64):x}", "expires_in": RNG.randint(2, 5)}
    return web.json_response(token)


async def faulty_upstream(request: web.BaseRequest) -> web.StreamResponse:
    await request.read()
    roll = RNG.random()
    if roll < 0.05:
        return web.Response(status=401, text="expired")
    if roll < 0.08:
        await asyncio.sleep(1)
    if roll < 0.13:
        response = web.StreamResponse(headers={"Content-Length": str(256 * 1024)})
        with contextlib.suppress(ConnectionError):  # the proxy's client may have gone
            await response.prepare(request)
            for _ in range(16):
                await response.write(b"x" * 16384)
                if roll < 0.10 and request.transport is not None:  # reset mid-body
                    request.transport.abort()
                    return response
        return response
    return web.Response(text="ok")


async def serve(handler: object) -> tuple[web.ServerRunner, str]:
    runner = web.ServerRunner(web.Server(handler, access_log=None), handle_signals=False)  # type: ignore[arg-type]
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def process_figures() -> tuple[float, int]:
    status = Path("/proc/self/status").read_text().splitlines()
    rss = int(next(line.split()[1] for line in status if line.startswith("VmRSS"))) / 1024
    return rss, len(os.listdir("/proc/self/fd"))


async def client_loop(
    session: aiohttp.ClientSession, url: str, until: float, counts: dict[str, int]
) -> None:
    while time.monotonic() < until:
        patience = 0.05 if RNG.random() < 0.05 else 5  # some clients give up early
        path = RNG.choice(["/oauth/x", "/oauth/y", "/static/z"])
        try:
            async with asyncio.timeout(patience):
                async with session.post(url + path, data=b"p" * RNG.randint(0, 2048)) as response:
                    await response.read()
                    counts[str(response.status)] = counts.get(str(response.status), 0) + 1
        except (TimeoutError, aiohttp.ClientError):
            counts["client gave up or was cut"] = counts.get("client gave up or was cut", 0) + 1


async def main(seconds: float, clients: int) -> bool:
    """Run; True if, once all is stopped, descriptors and tasks are back where they began."""
    _, fds_before = process_figures()
    idp, idp_url = await serve(faulty_idp)
    upstream, upstream_url = await serve(faulty_upstream)
    settings = validate(
        Settings,
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "server": {"access_log": False},
            "connectors": {
                "oauth": {
                    "route": "/oauth",
                    "upstream": upstream_url,
                    "timeouts": {"connect": 1, "read": 1.5},
                    "auth": {
                        "type": "oauth2",
                        "grant": "client_credentials",
                        "token_url": f"{idp_url}/token",
                        "client_id": "soak",
                        "client_secret": "soak-secret",
                        "refresh_margin": 1,
                        "reauth_interval": 0.5,
                    },
                },
                "static": {
                    "route": "/static",
                    "upstream": upstream_url,
                    "auth": {"type": "static", "token": "static-token"},
                },
            },
        },
    )
    proxy = ProxyServer(settings)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}"
    counts: dict[str, int] = {}
    samples: list[tuple[float, int, float, int, int]] = []
    start = time.monotonic()
    until = start + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        workers = [
            asyncio.ensure_future(client_loop(session, url, until, counts)) for _ in range(clients)
        ]
        print(f"{'s':>6} {'requests':>9} {'RSS MB':>7} {'fds':>5} {'tasks':>6}")
        while time.monotonic() < until:
            await asyncio.sleep(seconds / 10)
            rss, fds = process_figures()
            sample = (
                time.monotonic() - start,
                sum(counts.values()),
                rss,
                fds,
                len(asyncio.all_tasks()),
            )
            samples.append(sample)
            print(f"{sample[0]:6.1f} {sample[1]:9d} {rss:7.1f} {fds:5d} {sample[4]:6d}", flush=True)
        await asyncio.gather(*workers)
    await proxy.stop()
    for runner in (idp, upstream):
        await runner.cleanup()
    first, last = samples[min(1, len(samples) - 1)], samples[-1]  # after one tenth of warm-up
    print("statuses:", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(
        f"growth after warm-up: RSS {last[2] - first[2]:+.1f} MB, fds {last[3] - first[3]:+d}, "
        f"tasks {last[4] - first[4]:+d} over {last[0] - first[0]:.0f} s"
    )
    # Flatness under load is read from the samples; what a leak leaves behind once all is
    # stopped is exact, and checked: no descriptor and no task may outlive the run.
    await asyncio.sleep(0.1)  # closed transports finish closing on the next loop turns
    _, fds_after = process_figures()
    tasks_after = len(asyncio.all_tasks()) - 1
    print(f"after stop: fds {fds_after - fds_before:+d}, tasks left {tasks_after}")
    return fds_after <= fds_before and tasks_after == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="6 seconds (CI)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the faults are deliberate: no warning per fault
    clean = asyncio.run(main(6 if args.smoke else args.seconds, args.clients))
    if not clean:
        sys.exit("LEAK: descriptors or tasks outlived the run")
