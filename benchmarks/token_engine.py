"""The token engine under load: cold bursts, and a renewal in the middle of steady traffic.

    .venv/bin/python benchmarks/token_engine.py                 # 1,000 and 10,000; renewal
    .venv/bin/python benchmarks/token_engine.py --smoke         # 50 requests; short renewal

The identity provider answers after 50 ms (the demo IdP, client credentials) and counts the
token requests it receives.

- Cold burst: N concurrent requests reach a proxy that holds no token yet. Reported: time
  until every request is answered, failures, token requests (must be 1).
- Renewal under load: 16 clients send requests back to back for 9 s while tokens live 10 s
  (refresh margin 2 s, so one background renewal starts at 8 s). Reported: requests, failures,
  token requests (must be 2: the cold one and one renewal) and how many requests after the
  first second took longer than the provider's 50 ms, i.e. waited on it (must be 0).
- The fleet: the same two measurements with two ``tokenproxy run`` processes (one of them
  ``--workers 2``) sharing Redis (``TOKENPROXY_TEST_REDIS_URL``, default
  ``redis://127.0.0.1:6379/15``), requests spread over both: token requests must still be
  1 for the cold burst and 2 across the renewal, for the whole fleet. Skipped without Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
from aiohttp import web
from harness import child_process, free_port, serve_forever, tokenproxy

from proxy.secrets.envelope import generate_key

IDP_LATENCY = 0.05


def counting_idp(
    expires_in: int = 3600,
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The demo IdP behind 50 ms of latency; ``GET /count`` tells how many token requests."""
    from proxy.demo.idp import DemoIdentityProvider

    provider = DemoIdentityProvider(expires_in=expires_in)
    seen = 0

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal seen
        if request.path == "/count":
            return web.json_response({"token_requests": seen})
        seen += 1
        await asyncio.sleep(IDP_LATENCY)
        return await provider(request)

    return handle


def tiny_upstream() -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    return handle


async def burst(url: str | list[str], requests: int) -> tuple[float, int]:
    """Fire ``requests`` concurrent GETs (spread over ``url`` if a list); return (seconds
    until all answered, failures)."""
    urls = [url] if isinstance(url, str) else url
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(target: str) -> bool:
            try:
                async with session.get(target) as response:
                    await response.read()
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        started = time.perf_counter()
        results = await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(requests)))
        return time.perf_counter() - started, results.count(False)


def short_lived_idp() -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    return counting_idp(expires_in=10)


async def steady_load(url: str | list[str], clients: int, seconds: float) -> tuple[int, int, int]:
    """(requests, failures, requests after the first second slower than the IdP latency);
    client i sends to ``url[i % len(url)]`` when given a list."""
    urls = [url] if isinstance(url, str) else url
    done = failed = slow = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(target: str) -> None:
            nonlocal done, failed, slow
            while (now := time.perf_counter()) - started < seconds:
                try:
                    async with session.get(target) as response:
                        await response.read()
                        failed += response.status != 200
                except aiohttp.ClientError:
                    failed += 1
                done += 1
                if now - started > 1 and time.perf_counter() - now >= IDP_LATENCY:
                    slow += 1

        await asyncio.gather(*(client(urls[i % len(urls)]) for i in range(clients)))
    return done, failed, slow


async def token_requests(idp_port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{idp_port}/count") as response,
    ):
        return int((await response.json())["token_requests"])


def connectors_for(idp_port: int, upstream_port: int, margin: int = 60) -> str:
    return (
        "  api:\n"
        "    route: /api\n"
        f"    upstream: http://127.0.0.1:{upstream_port}\n"
        "    auth:\n"
        "      type: oauth2\n"
        "      grant: client_credentials\n"
        f"      token_url: http://127.0.0.1:{idp_port}/token\n"
        "      client_id: demo-client\n"
        "      client_secret: demo-secret\n"
        f"      refresh_margin: {margin}\n"
    )


def renewal_under_load(seconds: float) -> None:
    idp_port, upstream_port, proxy_port = free_port(), free_port(), free_port()
    with (
        child_process(serve_forever, short_lived_idp, idp_port, port=idp_port),
        child_process(serve_forever, tiny_upstream, upstream_port, port=upstream_port),
        tokenproxy(proxy_port, connectors_for(idp_port, upstream_port, margin=2)),
    ):
        done, failed, slow = asyncio.run(
            steady_load(f"http://127.0.0.1:{proxy_port}/api/x", 16, seconds)
        )
        fetched = asyncio.run(token_requests(idp_port))
    print(f"\nrenewal under load: {seconds:g} s, 16 clients, tokens live 10 s (renewal at 8 s)")
    print(f"{'requests':>9}{'failed':>8}{'token requests':>16}{'waited on IdP':>15}")
    print(f"{done:>9}{failed:>8}{fetched:>16}{slow:>15}")


def redis_url() -> str | None:
    url = os.environ.get("TOKENPROXY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception:
        return None
    return url


@contextlib.contextmanager
def fleet(idp_port: int, upstream_port: int, url: str, margin: int) -> Iterator[list[str]]:
    """Two proxy processes (the second with two workers) sharing Redis; their /api/x URLs."""
    os.environ.setdefault("TOKENPROXY_MASTER_KEY", generate_key())  # one key for the fleet
    prefix = f"tokenproxy-bench:{uuid.uuid4().hex[:8]}:"
    cache = f'cache: {{backend: redis, url: "{url}", key_prefix: "{prefix}"}}\n'
    ports = [free_port(), free_port()]
    connectors = connectors_for(idp_port, upstream_port, margin)
    with (
        tokenproxy(ports[0], connectors, extra_yaml=cache),
        tokenproxy(ports[1], connectors, workers=2, extra_yaml=cache),
    ):
        yield [f"http://127.0.0.1:{port}/api/x" for port in ports]


def fleet_measurements(smoke: bool) -> None:
    url = redis_url()
    if url is None:
        print("\nfleet: skipped, no Redis (set TOKENPROXY_TEST_REDIS_URL)")
        return
    size = 50 if smoke else 2000
    idp_port, upstream_port = free_port(), free_port()
    with (
        child_process(serve_forever, counting_idp, idp_port, port=idp_port),
        child_process(serve_forever, tiny_upstream, upstream_port, port=upstream_port),
        fleet(idp_port, upstream_port, url, margin=60) as urls,
    ):
        seconds, failed = asyncio.run(burst(urls, size))
        fetched = asyncio.run(token_requests(idp_port))
    print("\nfleet cold burst: 2 processes (1 + 2 workers) sharing Redis")
    print(f"{'requests':>9}{'seconds':>10}{'failed':>8}{'token requests':>16}")
    print(f"{size:>9}{seconds:>10.2f}{failed:>8}{fetched:>16}")
    if smoke:
        return  # the renewal is measured above, on one process
    seconds_of_load = 9
    idp_port, upstream_port = free_port(), free_port()
    with (
        child_process(serve_forever, short_lived_idp, idp_port, port=idp_port),
        child_process(serve_forever, tiny_upstream, upstream_port, port=upstream_port),
        fleet(idp_port, upstream_port, url, margin=2) as urls,
    ):
        done, failed, slow = asyncio.run(steady_load(urls, 16, seconds_of_load))
        fetched = asyncio.run(token_requests(idp_port))
    print(f"\nfleet renewal under load: {seconds_of_load} s, 16 clients over both processes")
    print(f"{'requests':>9}{'failed':>8}{'token requests':>16}{'waited on IdP':>15}")
    print(f"{done:>9}{failed:>8}{fetched:>16}{slow:>15}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--smoke", action="store_true", help="one burst of 50 (CI)")
    args = parser.parse_args()
    sizes = [50] if args.smoke else args.sizes

    print(f"{'requests':>9}{'seconds':>10}{'failed':>8}{'token requests':>16}")
    for size in sizes:
        # A fresh proxy per burst: every burst starts cold.
        idp_port, upstream_port, proxy_port = free_port(), free_port(), free_port()
        connectors = connectors_for(idp_port, upstream_port)
        with (
            child_process(serve_forever, counting_idp, idp_port, port=idp_port),
            child_process(serve_forever, tiny_upstream, upstream_port, port=upstream_port),
            tokenproxy(proxy_port, connectors),
        ):
            seconds, failed = asyncio.run(burst(f"http://127.0.0.1:{proxy_port}/api/x", size))
            fetched = asyncio.run(token_requests(idp_port))
        print(f"{size:>9}{seconds:>10.2f}{failed:>8}{fetched:>16}")
    renewal_under_load(7 if args.smoke else 9)
    fleet_measurements(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
