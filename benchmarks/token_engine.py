"""Cold-start burst: N concurrent requests reach tokenproxy before it holds any token.

    .venv/bin/python benchmarks/token_engine.py                 # 1,000 and 10,000 requests
    .venv/bin/python benchmarks/token_engine.py --smoke         # 50 requests (CI)

The identity provider answers after 50 ms (the demo IdP, client credentials); it counts the
token requests it receives, which must be exactly 1 per burst. Reported: time until every
request is answered, how many failed, and the token requests the provider saw.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from harness import child_process, free_port, serve_forever, tokenproxy

IDP_LATENCY = 0.05


def counting_idp() -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The demo IdP behind 50 ms of latency; ``GET /count`` tells how many token requests."""
    from proxy.demo.idp import DemoIdentityProvider

    provider = DemoIdentityProvider(expires_in=3600)
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


async def burst(url: str, requests: int) -> tuple[float, int]:
    """Fire ``requests`` concurrent GETs; return (seconds until all answered, failures)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> bool:
            try:
                async with session.get(url) as response:
                    await response.read()
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(requests)))
        return time.perf_counter() - started, results.count(False)


async def token_requests(idp_port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{idp_port}/count") as response,
    ):
        return int((await response.json())["token_requests"])


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
        connectors = (
            "  api:\n"
            "    route: /api\n"
            f"    upstream: http://127.0.0.1:{upstream_port}\n"
            "    auth:\n"
            "      type: oauth2\n"
            "      grant: client_credentials\n"
            f"      token_url: http://127.0.0.1:{idp_port}/token\n"
            "      client_id: demo-client\n"
            "      client_secret: demo-secret\n"
        )
        with (
            child_process(serve_forever, counting_idp, idp_port, port=idp_port),
            child_process(serve_forever, tiny_upstream, upstream_port, port=upstream_port),
            tokenproxy(proxy_port, connectors),
        ):
            seconds, failed = asyncio.run(burst(f"http://127.0.0.1:{proxy_port}/api/x", size))
            fetched = asyncio.run(token_requests(idp_port))
        print(f"{size:>9}{seconds:>10.2f}{failed:>8}{fetched:>16}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
