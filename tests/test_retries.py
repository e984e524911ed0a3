"""Upstream retries (``retries``): which answers and failures earn another send, how long it
waits (``Retry-After`` or a jittered back-off, seen through a fake clock, never slept), and
that no request is ever sent more than ``1 + attempts`` times, its re-auth replay included.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config.loader import load_settings
from proxy.egress.retries import BASE_DELAY, retry_after
from proxy.errors import ConfigError
from tests.conftest import StartProxy, WriteConfig, oauth2_connector
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream
from tests.test_metrics import moved, scrape, value

RETRIES = {"attempts": 2, "on": [429, 502, 503, 504], "max_delay": 10}


def scripted(upstream: RecordingUpstream, *answers: tuple[int, dict[str, str]]) -> None:
    """The upstream answers these (status, headers) in turn, then 200 with what it got."""
    queue = list(answers)

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        if queue:
            status, headers = queue.pop(0)
            return web.Response(status=status, headers=headers, text=f"answer {status}")
        return web.Response(text="ok")

    upstream.respond = respond


def static_connector(upstream: RecordingUpstream, **fields: Any) -> dict[str, Any]:
    return {
        "connectors": {
            "api": {
                "route": "/api",
                "upstream": upstream.url,
                "auth": {"type": "static", "token": "static-token-value"},
                **fields,
            }
        }
    }


def http_date(wall: float) -> str:
    return email.utils.formatdate(wall, usegmt=True)


@pytest.mark.parametrize(
    ("header", "waited"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("date+3", 3.0),  # an HTTP date, read on the proxy's (fake) wall clock
        (None, None),  # no Retry-After: a jittered back-off of at most 25 ms
        ("²", None),  # unreadable (a digit to str.isdigit, not to float): a back-off too
    ],
)
async def test_a_listed_status_is_sent_again_after_its_retry_after(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    header: str | None,
    waited: float | None,
) -> None:
    proxy = await start_proxy(static_connector(upstream, retries=RETRIES), clock)
    headers = {}
    if header is not None:
        headers["Retry-After"] = http_date(clock.wall() + 3) if header == "date+3" else header
    scripted(upstream, (503, headers))
    before = clock.now
    async with client.get(f"{proxy.url}/api/x") as response:
        assert (response.status, await response.text()) == (200, "ok")
    assert len(upstream.requests) == 2
    if waited is None:
        assert 0 <= clock.now - before <= BASE_DELAY
    else:
        assert clock.now - before == pytest.approx(waited, abs=1.0)


async def test_a_retry_after_longer_than_max_delay_goes_to_the_client(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(static_connector(upstream, retries=RETRIES), clock)
    scripted(upstream, (429, {"Retry-After": "60"}))
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "60"
    assert len(upstream.requests) == 1 and clock.now == 1000.0  # nothing waited


@pytest.mark.parametrize("attempts", [0, 1, 3])
async def test_never_more_than_one_plus_attempts_sends(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    attempts: int,
) -> None:
    proxy = await start_proxy(
        static_connector(upstream, retries={**RETRIES, "attempts": attempts}), clock
    )
    scripted(upstream, *[(503, {"Retry-After": "1"})] * 10)
    before = await scrape(client, proxy.url)
    with caplog.at_level(logging.INFO, logger="tokenproxy.access"):
        async with client.get(f"{proxy.url}/api/x") as response:
            assert response.status == 503
    assert len(upstream.requests) == 1 + attempts
    retried = moved(before, await scrape(client, proxy.url))
    counted = value(retried, "tokenproxy_upstream_retries_total", connector="api", reason="503")
    assert counted == attempts
    (line,) = [r.getMessage() for r in caplog.records if "/api/x" in r.getMessage()]
    assert (f"retries={attempts}" in line) == bool(attempts)


async def test_the_reauth_replay_counts_among_the_attempts(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    config = {"connectors": {"api": oauth2_connector(upstream.url, idp.url)}}
    config["connectors"]["api"]["retries"] = {**RETRIES, "attempts": 2}
    proxy = await start_proxy(config, clock)
    scripted(upstream, (401, {}), (503, {}), (503, {}), (503, {}))
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 503
    # 401 -> renew -> replay (1) -> 503 -> retry (2) -> 503: three sends in all.
    assert len(upstream.requests) == 3
    assert len([g for g in idp.grants if g == "client_credentials"]) == 2


@pytest.mark.parametrize(
    ("method", "methods", "sends"),
    [
        ("POST", None, 1),  # not idempotent: never sent twice unless listed
        ("POST", ["POST"], 2),
        ("PUT", None, 2),
        ("DELETE", ["GET"], 1),
    ],
)
async def test_only_listed_methods_are_sent_again(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    method: str,
    methods: list[str] | None,
    sends: int,
) -> None:
    retries = RETRIES if methods is None else {**RETRIES, "methods": methods}
    proxy = await start_proxy(static_connector(upstream, retries=retries), clock)
    scripted(upstream, (502, {}))
    async with client.request(method, f"{proxy.url}/api/x", data=b"payload") as response:
        assert response.status == (200 if sends == 2 else 502)
    assert len(upstream.requests) == sends
    sent = hashlib.sha256(b"payload").hexdigest()  # the held body, sent again byte-exact
    assert {r["body_sha256"] for r in upstream.requests} == {sent}


async def test_a_streamed_body_is_never_sent_twice(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(static_connector(upstream, retries=RETRIES), clock)
    scripted(upstream, (503, {}))

    async def chunks() -> Any:
        yield b"part one, "
        yield b"part two"

    async with client.put(f"{proxy.url}/api/x", data=chunks()) as response:
        assert response.status == 503
    assert len(upstream.requests) == 1


class DroppingUpstream:
    """Closes its first ``drops`` connections after reading the request, without a byte
    of answer (a pooled connection the upstream had just closed); answers 200 after."""

    def __init__(self, drops: int, answers: tuple[bytes, ...] = ()) -> None:
        self.drops = drops
        self.answers = list(answers)  # what the connections after the drops get, then OK
        self.requests: list[bytes] = []
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            if len(self.requests) > self.drops:
                status = self.answers.pop(0) if self.answers else b"200 OK"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("method", "retries", "drops", "status", "sends"),
    [
        ("GET", None, 1, 200, 2),  # without `retries`: one more try of an idempotent request
        ("GET", None, 2, 502, 2),
        ("POST", None, 1, 502, 1),  # a POST may have run: never sent twice
        ("GET", {"attempts": 3}, 3, 200, 4),
        ("GET", {"attempts": 0}, 1, 502, 1),
    ],
)
async def test_a_connection_that_failed_before_any_answer_is_tried_again(
    start_proxy: StartProxy,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    method: str,
    retries: dict[str, Any] | None,
    drops: int,
    status: int,
    sends: int,
) -> None:
    dropping = DroppingUpstream(drops)
    server = await dropping.start()
    try:
        extra = {} if retries is None else {"retries": retries}
        upstream = RecordingUpstream()
        upstream.url = f"http://127.0.0.1:{dropping.port}"
        proxy = await start_proxy(static_connector(upstream, **extra), clock)
        async with client.request(method, f"{proxy.url}/api/x") as response:
            assert response.status == status
        assert len(dropping.requests) == sends
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: at once
        ("soon", None),
        ("²", None),  # a digit to str.isdigit, not to float()
        ("١٢", None),
        ("-3", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header, 1_800_000_000.0) == seconds


def test_retry_after_of_a_future_http_date_counts_from_the_given_wall_clock() -> None:
    assert retry_after(http_date(1_800_000_090.0), 1_800_000_000.0) == 90.0


def test_the_contracts_retries_line_loads_as_written(tmp_path: Path) -> None:
    """YAML 1.1 would read the key ``on`` as the boolean true; the loader reads YAML 1.2."""
    path = tmp_path / "tokenproxy.yaml"
    path.write_text(
        "connectors:\n"
        "  crm:\n"
        "    route: /crm\n"
        "    upstream: https://api.crm.example.com/v2\n"
        "    retries: {attempts: 1, on: [429, 502, 503, 504], "
        "methods: [GET, HEAD, OPTIONS, PUT, DELETE]}\n"
        "    warmup: no\n"
        "    auth: {type: static, token: a-static-token}\n"
    )
    crm = load_settings(path).settings.connectors["crm"]
    assert crm.retries is not None and crm.retries.on == [429, 502, 503, 504]
    assert (crm.retries.attempts, crm.warmup) == (1, False)


@pytest.mark.parametrize(
    ("retries", "problem"),
    [
        ({"on": [404]}, "connectors.api.retries.on: may list 5xx, 408, 425 and 429 only (404:"),
        ({"methods": ["TRACE"]}, "connectors.api.retries.methods: CONNECT and TRACE are never"),
        ({"attempts": 11}, "connectors.api.retries.attempts: Input should be less than or equal"),
        ({"max_delay": -1}, "connectors.api.retries.max_delay: Input should be greater than or"),
        ({"tries": 2}, "connectors.api.retries.tries: unknown key"),
    ],
)
def test_retry_mistakes_are_refused_by_field_path(
    write_config: WriteConfig, retries: dict[str, Any], problem: str
) -> None:
    config = static_connector(RecordingUpstream(), retries=retries)
    config["connectors"]["api"]["upstream"] = "https://api.example.test"
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(config))
    (found,) = caught.value.problems
    assert found.startswith(problem), found


async def test_a_failed_connection_never_costs_a_request_its_reauth_replay(
    start_proxy: StartProxy,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    dropping = DroppingUpstream(1, answers=(b"401 Unauthorized",))
    server = await dropping.start()
    try:
        api = oauth2_connector(f"http://127.0.0.1:{dropping.port}", idp.url)
        proxy = await start_proxy({"connectors": {"api": api}}, clock)
        async with client.get(f"{proxy.url}/api/x") as response:
            assert response.status == 200  # dropped, 401, renewed, replayed
        assert len(dropping.requests) == 3
    finally:
        server.close()
        await server.wait_closed()
