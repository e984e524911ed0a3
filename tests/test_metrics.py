"""``/_proxy/metrics``: the values move as requests, token fetches and failures happen, in the
Prometheus text format (parsed by prometheus-client's own parser); one scrape covers every
worker of ``--workers 2``."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    StartProxy,
    WriteConfig,
    eventually,
    hold_answers,
    http_status,
    oauth2_connector,
    upstream_received,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer
from tests.test_cli import connector, running


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def scrape(client: aiohttp.ClientSession, base: str) -> dict[Any, float]:
    async with client.get(f"{base}/_proxy/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples(await response.text())


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    """How far each sample moved (counters are per process: other tests ran here before)."""
    return {key: after[key] - before.get(key, 0.0) for key in after}


async def test_metrics_follow_requests_fetches_and_failures(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(
        {"connectors": {"api": oauth2_connector(upstream.url, idp.url)}}, clock
    )
    before = await scrape(client, proxy.url)
    for _ in range(3):
        async with client.get(f"{proxy.url}/api/x") as response:
            assert response.status == 200
    async with client.get(f"{proxy.url}/nowhere") as response:
        assert response.status == 404
    state = await scrape(client, proxy.url)
    found = moved(before, state)
    assert value(found, "tokenproxy_requests_total", connector="api", status="200") == 3
    assert value(found, "tokenproxy_requests_total", connector="", status="404") == 1
    assert value(found, "tokenproxy_request_duration_seconds_count", connector="api") == 3
    assert value(found, "tokenproxy_upstream_duration_seconds_count", connector="api") == 3
    assert value(found, "tokenproxy_token_requests_total", connector="api", outcome="success") == 1
    assert value(found, "tokenproxy_token_fetch_duration_seconds_count", connector="api") == 1
    assert value(found, "tokenproxy_token_cache_total", connector="api", result="hit") == 2
    assert value(found, "tokenproxy_token_cache_total", connector="api", result="miss") == 1
    assert value(found, "tokenproxy_token_store_total", connector="api", result="miss") == 1
    assert 290 <= value(state, "tokenproxy_token_expiry_seconds", connector="api") <= 300
    assert value(state, "tokenproxy_token_backoff", connector="api") == 0
    assert value(state, "tokenproxy_token_store_up", backend="memory") == 1
    assert value(state, "tokenproxy_in_flight_requests") == 1  # the scrape itself

    clock.advance(400)  # expired; the provider fails: counted, and the connector backs off
    idp.script = [answer(400, {"error": "invalid_client"})]
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 502
    before, state = state, await scrape(client, proxy.url)
    found = moved(before, state)
    assert value(found, "tokenproxy_token_requests_total", connector="api", outcome="failure") == 1
    assert value(found, "tokenproxy_requests_total", connector="api", status="502") == 1
    assert value(state, "tokenproxy_token_backoff", connector="api") == 1
    assert ("tokenproxy_token_expiry_seconds", (("connector", "api"),)) not in state
    async with client.get(f"{proxy.url}/_proxy/metrics") as response:
        text = await response.text()
    assert not any(token in text for token in idp.issued) and "demo-secret" not in text


async def test_one_scrape_counts_every_worker(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0", "--workers", "2")
    async with running(*args, ready=r"(listening on .*\n.*){2}", drain=True) as (_, output):
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        workers = set()
        for _ in range(40):  # a new connection each time: the kernel spreads them
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/api/x") as response:
                    assert response.status == 200
                async with session.get(f"{base}/_proxy/health") as response:
                    workers.add((await response.json())["worker"])
        assert len(workers) == 2

        async def counted_by_both() -> bool:
            async with aiohttp.ClientSession() as session:
                found = await scrape(session, base)
            return value(found, "tokenproxy_requests_total", connector="api", status="200") == 40

        await eventually(counted_by_both, within=5)  # snapshots are at most a second old


async def test_unknown_names_and_vanished_clients_are_counted_sanely(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    """A client cannot grow the labels (names from paths that match no connector), and one
    that goes away before the answer is 499, not 500."""
    release = hold_answers(upstream)
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})
    before = await scrape(client, proxy.url)
    for index in range(5):
        assert await http_status(client, proxy, f"/_proxy/oauth/junk{index}/start") == 404
    leaving = asyncio.ensure_future(client.get(f"{proxy.url}/api/slow"))
    await eventually(lambda: upstream_received(upstream), within=5)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)

    async def counted() -> bool:
        found = moved(before, await scrape(client, proxy.url))
        return value(found, "tokenproxy_requests_total", connector="api", status="499") == 1

    await eventually(counted, within=5)
    release.set()
    async with client.get(f"{proxy.url}/_proxy/metrics") as response:
        assert "junk" not in await response.text()
