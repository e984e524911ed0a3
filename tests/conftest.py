"""Shared fixtures: a recording upstream, a proxy started from a YAML config, a raw client."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml
from aiohttp import web
from pytest_aiohttp import AiohttpRawServer

from proxy.config.loader import load_settings, validate
from proxy.config.models import Settings
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.demo.idp import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from proxy.http.server import ProxyServer
from proxy.logs import install_filters
from proxy.runtime import Plan, prepare
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream


@dataclass
class RunningProxy:
    server: ProxyServer
    url: str
    port: int


StartProxy = Callable[..., Awaitable[RunningProxy]]
WriteConfig = Callable[[dict[str, Any]], Path]


@pytest.fixture
async def upstream(aiohttp_raw_server: AiohttpRawServer) -> RecordingUpstream:
    fake = RecordingUpstream()
    # Like the proxy, the fake must see bodies as sent: no inflating of gzip bodies. Its
    # access log is off: aiohttp's default logs query strings, and the canary tests read logs.
    server = await aiohttp_raw_server(fake, auto_decompress=False, access_log=None)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def idp(aiohttp_raw_server: AiohttpRawServer, clock: FakeClock) -> FakeIdP:
    fake = FakeIdP()
    fake.clock = clock  # its Date header tells the fake time, as a real provider's tells its own
    server = await aiohttp_raw_server(fake, access_log=None)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(config: dict[str, Any]) -> Path:
        path = tmp_path / "tokenproxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))  # keep the order written
        return path

    return write


def reader(path: Path) -> Callable[[], Awaitable[Settings]]:
    """What reloads an in-process proxy: the file validated here (``run`` validates it in a
    process of its own, :mod:`proxy.config.handoff`)."""

    async def load() -> Settings:
        return load_settings(path).settings

    return load


@pytest.fixture
async def start_proxy(
    write_config: Callable[[dict[str, Any]], Path],
) -> AsyncIterator[StartProxy]:
    """Start a real proxy on an ephemeral loopback port from a config dict (via the loader)."""
    started: list[ProxyServer] = []

    async def start(config: dict[str, Any], clock: FakeClock | None = None) -> RunningProxy:
        config = {**config, "listen": {"host": "127.0.0.1", "port": 0, **config.get("listen", {})}}
        path = write_config(config)
        settings = load_settings(path).settings
        server = ProxyServer(settings, clock, load=reader(path))
        await server.start()
        started.append(server)
        assert server.port is not None
        return RunningProxy(server, f"http://127.0.0.1:{server.port}", server.port)

    yield start
    for server in started:
        await server.stop()


def check_config(path: Path) -> Plan:
    """What ``tokenproxy check`` does: load, then the build step's pure phase (TLS files,
    keys, grants). Raises ``ConfigError`` with every problem."""
    return prepare(load_settings(path).settings)


def connector(upstream_url: str, **fields: Any) -> dict[str, Any]:
    """A connector config for tests: route /api, static token, overridable fields."""
    return {"route": "/api", "upstream": upstream_url, "auth": STATIC_AUTH, **fields}


def oauth2_connector(upstream_url: str, idp_url: str, **auth: Any) -> dict[str, Any]:
    """A connector on /api whose token comes from the fake IdP (client credentials)."""
    settings = {
        "type": "oauth2",
        "grant": "client_credentials",
        "token_url": f"{idp_url}/token",
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
        **auth,
    }
    return {"route": "/api", "upstream": upstream_url, "auth": settings}


def oauth2_auth_config(**fields: Any) -> OAuth2AuthConfig:
    """A validated client-credentials auth block, for tests of the parts without sockets."""
    settings = {
        "type": "oauth2",
        "grant": "client_credentials",
        "token_url": "https://idp.example/token",
        "client_id": "id",
        "client_secret": "secret",
        **fields,
    }
    return validate(OAuth2AuthConfig, settings)


StartOAuth2 = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
def start_oauth2(
    start_proxy: StartProxy, upstream: RecordingUpstream, idp: FakeIdP, clock: FakeClock
) -> StartOAuth2:
    """Start a proxy with one connector 'api' on /api, its token from the fake IdP, on the
    fake clock; keyword arguments go into its ``auth`` block."""

    async def start(**auth: Any) -> RunningProxy:
        connectors = {"api": oauth2_connector(upstream.url, idp.url, **auth)}
        return await start_proxy({"connectors": connectors}, clock)

    return start


async def warm(
    client: aiohttp.ClientSession, proxy: RunningProxy, upstream: RecordingUpstream
) -> str:
    """One successful request through /api; returns the Authorization it carried upstream."""
    async with client.get(f"{proxy.url}/api/warm") as response:
        assert response.status == 200
    return upstream.header_values("Authorization")[0]


async def failed_then_served(
    client: aiohttp.ClientSession,
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    clock: FakeClock,
) -> list[str]:
    """Where a secret of /api's token requests must never show: the 502 body of a first
    request whose token request was refused, then ``/connectors`` once a token was had."""
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 502
        refused = await response.text()
    clock.advance(120)  # past the back-off
    await warm(client, proxy, upstream)
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        return [refused, await response.text()]


STATIC_TOKEN = "tok_static_test_value"
STATIC_AUTH = {"type": "static", "token": STATIC_TOKEN}


@pytest.fixture
async def api_proxy(start_proxy: StartProxy, upstream: RecordingUpstream) -> RunningProxy:
    """The common case: one connector 'api' on /api -> <upstream>/base with a static token."""
    return await start_proxy({"connectors": {"api": connector(upstream.url + "/base")}})


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends only what the test says and never alters bodies."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(total=15),
    ) as session:
        yield session


async def raw_request(port: int, data: bytes, *, until_close: bool = False) -> bytes:
    """Send raw bytes; return the answer once the proxy closes, or (unless ``until_close``)
    once one response with a ``Content-Length`` body is complete. Bounded to 5 seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                answer += chunk
                if not until_close and _complete(answer):
                    break
        return answer
    finally:
        writer.close()


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 5) -> None:
    """Wait until ``condition()`` holds, polling; fail after ``within`` seconds.

    For state of another server (a fetch finishing in the proxy), which offers no event.
    """
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 - nothing to await but the state itself
            await asyncio.sleep(0.02)


async def status_and_message(
    client: aiohttp.ClientSession, proxy: RunningProxy | str, path: str = "/api/x"
) -> tuple[int, str]:
    """GET ``path`` from a proxy (or a base URL): the status and the JSON error's message."""
    base = proxy if isinstance(proxy, str) else proxy.url
    async with client.get(base + path) as response:
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, body.get("message", "")


async def http_status(
    client: aiohttp.ClientSession, proxy: RunningProxy | str, path: str = "/api/x"
) -> int:
    return (await status_and_message(client, proxy, path))[0]


async def connector_status(client: aiohttp.ClientSession, proxy: RunningProxy) -> dict[str, Any]:
    """The first connector's entry in ``/_proxy/connectors``."""
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        return (await response.json())["connectors"][0]  # type: ignore[no-any-return]


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


REDIS_URL = os.environ.get("TOKENPROXY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared Redis server, or a skip (a failure under CI, where .ci/run starts one)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Redis at {REDIS_URL}: .ci/run should have started one")
        pytest.skip(f"no Redis at {REDIS_URL} (set TOKENPROXY_TEST_REDIS_URL, or run .ci/run)")
    yield REDIS_URL
    client.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are removed afterwards."""
    value = f"tokenproxy-test:{uuid.uuid4().hex[:12]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{value}*"):
        client.delete(key)
    client.close()


@pytest.fixture(autouse=True)
def _proxy_log_filters() -> None:
    # What `tokenproxy run` installs; tests see the logs production would write.
    install_filters()
    logging.getLogger().setLevel(logging.DEBUG)


def device_flow(say: Callable[[str], None]) -> Any:
    """The device authorization flow, telling ``say`` what a person would read."""
    from proxy.tokens.device import authorize_device

    return functools.partial(authorize_device, say=say)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As root in a closed network: no sandbox, and none of Chromium's own background traffic.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium under selenium; skipped with the reason where none is installed
    (``.ci/run`` installs it, so CI fails instead)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"no headless browser: {', '.join(missing)} missing (apt-get install chromium "
        reason += "chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        *CHROMIUM_FLAGS,
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    """A loopback port free now (for a server whose address must be known before it starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hold_answers(upstream: RecordingUpstream, text: str = "finished") -> asyncio.Event:
    """Make ``upstream`` hold each answer (``text``) until the returned event is set."""
    release = asyncio.Event()

    async def held(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(text=text)

    upstream.respond = held
    return release


async def upstream_received(upstream: RecordingUpstream) -> bool:
    return bool(upstream.requests)
