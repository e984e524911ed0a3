"""The redis backend against the real Redis server: one token request per lifetime for a
fleet, leases that outlive slow providers and dead holders, outages that lose nothing.

Replicas are ProxyServers with state directories of their own (separate machines), in this
process on one fake clock, or real ``tokenproxy run`` processes where a process must die.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import trustme
import yaml

from proxy.secrets.envelope import KEY_ENV, generate_key
from tests.conftest import (
    RunningProxy,
    StartProxy,
    WriteConfig,
    connector_status,
    http_status,
    oauth2_connector,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream
from tests.test_cli import running

REDIS_PASSWORD = "sec_CANARY_redis_password"


@pytest.fixture(autouse=True)
def _fleet_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, generate_key())  # every replica of a fleet shares one


class PrivateRedis:
    """A redis-server of this test's own on a free port, to stop, freeze and start again."""

    def __init__(self, directory: Path, tls: dict[str, str] | None = None) -> None:
        """``tls``: PEM paths ``cert``, ``key``, ``ca``: TLS only, client certificates from
        that CA required, and an ACL user ``tokenproxy`` with a password."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = ["--port", str(self.port)]
        self.client_options: dict[str, Any] = {}
        if tls is not None:
            self.url = f"rediss://tokenproxy:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"
            self.options = [
                "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls["cert"],
                "--tls-key-file", tls["key"], "--tls-ca-cert-file", tls["ca"],
                "--tls-auth-clients", "yes", "--user", "default", "off",
                "--user", "tokenproxy", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
            ]  # fmt: skip
            self.client_options = {
                "ssl": True, "ssl_ca_certs": tls["ca"], "ssl_certfile": tls["cert"],
                "ssl_keyfile": tls["key"], "username": "tokenproxy", "password": REDIS_PASSWORD,
            }  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is not installed: .ci/run needs it")
            pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [binary, *self.options, *common, "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, **self.client_options
        )
        for _ in range(100):  # up to 5 s
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            subprocess.run(["sleep", "0.05"], check=True)
        pytest.fail("the private redis-server did not start")

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def api(upstream: RecordingUpstream, idp: FakeIdP) -> dict[str, Any]:
    return oauth2_connector(upstream.url, idp.url)


def replica(
    tmp_path: Path, name: str, url: str, prefix: str, connectors: dict[str, Any], **cache: Any
) -> dict[str, Any]:
    """The config of one replica: its own state_dir, the shared Redis."""
    return {
        "state_dir": str(tmp_path / name),
        "cache": {"backend": "redis", "url": url, "key_prefix": prefix, **cache},
        "connectors": connectors,
    }


@pytest.fixture
async def fleet(
    start_proxy: StartProxy,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
) -> AsyncIterator[Any]:
    """``await fleet(n, **auth)``: n replicas of one oauth2 connector sharing Redis."""

    async def start(count: int, **auth: Any) -> list[RunningProxy]:
        connectors = {"api": oauth2_connector(upstream.url, idp.url, **auth)}
        return [
            await start_proxy(replica(tmp_path, f"r{i}", redis_url, prefix, connectors), clock)
            for i in range(count)
        ]

    yield start


async def test_a_cold_burst_on_two_replicas_makes_one_token_request(
    fleet: Any, idp: FakeIdP, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    a, b = await fleet(2)
    idp.delay = 0.3
    statuses = await asyncio.gather(*(http_status(client, (a, b)[i % 2]) for i in range(400)))
    assert statuses == [200] * 400
    assert len(idp.calls) == 1
    assert len({dict(r["headers"])["Authorization"] for r in upstream.requests}) == 1
    assert [(await connector_status(client, p))["source"] for p in (a, b)].count("store") >= 1


async def test_a_renewal_under_load_is_one_request_for_the_fleet_and_nobody_waits(
    fleet: Any, idp: FakeIdP, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    a, b = await fleet(2)
    assert await http_status(client, a) == 200 and await http_status(client, b) == 200
    assert len(idp.calls) == 1
    for _ in range(3):  # three lifetimes: 300 s tokens, renewable from 240 s
        clock.advance(250)
        idp.delay = 0.5
        statuses = await asyncio.gather(*(http_status(client, (a, b)[i % 2]) for i in range(200)))
        assert statuses == [200] * 200  # all served by the held token while one renews
        idp.delay = 0
        async with asyncio.timeout(5):
            while idp.active or (await connector_status(client, b))["expires_in"] < 250:
                await asyncio.sleep(0.05)
                await http_status(client, b)  # b learns of a's renewal from the store
    assert len(idp.calls) == 4  # one per lifetime, for both replicas


async def test_rotation_never_runs_twice_in_the_fleet(
    fleet: Any, idp: FakeIdP, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    replicas = await fleet(3, grant="refresh_token", refresh_token=idp.seed_refresh_token())
    for _ in range(4):
        statuses = await asyncio.gather(*(http_status(client, replicas[i % 3]) for i in range(150)))
        assert statuses == [200] * 150
        clock.advance(400)  # expired everywhere: every replica wants to renew at once
    assert idp.grants == ["refresh_token"] * 4
    assert not idp.reuse_detected


async def test_a_provider_slower_than_the_lease_never_lets_a_second_replica_in(
    start_proxy: StartProxy,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    api = oauth2_connector(upstream.url, idp.url)
    api["timeouts"] = {"read": 5}
    a, b = [
        await start_proxy(replica(tmp_path, n, redis_url, prefix, {"api": api}, lease_ttl=0.3))
        for n in ("a", "b")
    ]
    idp.delay = 1.2  # four lease lifetimes
    assert await asyncio.gather(http_status(client, a), http_status(client, b)) == [200, 200]
    assert len(idp.calls) == 1


async def test_a_replica_killed_mid_fetch_hands_over_to_another(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    api = oauth2_connector(upstream.url, idp.url)
    api["timeouts"] = {"read": 10}
    dying = replica(tmp_path, "dying", redis_url, prefix, {"api": api}, lease_ttl=0.5)
    path = write_config({**dying, "listen": {"host": "127.0.0.1", "port": 0}})
    idp.delay = 30  # the first token request never ends: its replica dies holding the lease
    async with running("run", "-c", str(path), ready=r"listening on http://\S+:(\d+)") as (
        process,
        output,
    ):
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        stuck = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/api/x"))
        async with asyncio.timeout(5):
            while not idp.calls:  # noqa: ASYNC110 - the provider has no event
                await asyncio.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
    idp.delay = 0
    survivor = await start_proxy(replica(tmp_path, "survivor", redis_url, prefix, {"api": api}))
    assert await http_status(client, survivor) == 200  # waited for the lease to lapse, then fetched
    assert len(idp.calls) == 2


async def test_a_burst_of_401s_across_the_fleet_renews_once(
    fleet: Any, idp: FakeIdP, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    a, b = await fleet(2)
    assert await http_status(client, a) == 200 and await http_status(client, b) == 200
    rejected = dict(upstream.last["headers"])["Authorization"]

    async def respond(request: Any) -> Any:
        from aiohttp import web

        if request.headers.get("Authorization") == rejected:
            return web.Response(status=401)
        return web.Response(text="ok")

    upstream.respond = respond
    statuses = await asyncio.gather(*(http_status(client, (a, b)[i % 2]) for i in range(100)))
    assert statuses == [200] * 100
    assert len(idp.calls) == 2  # the first token, and one renewal for everyone


async def test_tokens_in_redis_are_encrypted_and_namespaced(
    fleet: Any, idp: FakeIdP, client: aiohttp.ClientSession, redis_url: str, prefix: str
) -> None:
    idp.overrides.update(access_token="tok_CANARY_in_redis")
    (a,) = await fleet(
        1, grant="refresh_token", refresh_token=idp.seed_refresh_token("u", "rt_CANARY_x")
    )
    assert await http_status(client, a) == 200
    raw = redis.Redis.from_url(redis_url)
    keys = [key.decode() for key in raw.scan_iter(match=f"{prefix}*")]
    assert keys and all(re.fullmatch(rf"{re.escape(prefix)}token:[0-9a-f]{{32}}", k) for k in keys)
    for key in keys:
        assert b"CANARY" not in b"".join(raw.hgetall(key).values())
    raw.close()


async def test_a_tampered_entry_is_a_miss(
    fleet: Any,
    start_proxy: StartProxy,
    tmp_path: Path,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    redis_url: str,
    prefix: str,
    clock: FakeClock,
) -> None:
    (a,) = await fleet(1)
    assert await http_status(client, a) == 200
    raw = redis.Redis.from_url(redis_url)
    (key,) = list(raw.scan_iter(match=f"{prefix}token:*"))
    sealed = raw.hget(key, "data")
    raw.hset(key, "data", sealed[:-6] + b"AAAAAA")  # type: ignore[index,operator]
    raw.close()
    # Another machine (a state_dir of its own) finds only the tampered entry: a miss.
    other = replica(tmp_path, "other-machine", redis_url, prefix, {"api": api(upstream, idp)})
    b = await start_proxy(other, clock)
    assert await http_status(client, b) == 200
    assert len(idp.calls) == 2
    # This machine's own copy is intact, and newer than nothing: it still serves from it.
    (c,) = await fleet(1)
    assert await http_status(client, c) == 200
    assert len(idp.calls) == 2


@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_redis_down_keeps_serving_and_loses_nothing(
    outage: str,
    start_proxy: StartProxy,
    tmp_path: Path,
    private_redis: PrivateRedis,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = {"grant": "refresh_token", "refresh_token": idp.seed_refresh_token()}
    connectors = {"api": oauth2_connector(upstream.url, idp.url, **auth)}
    config = replica(tmp_path, "a", private_redis.url, "tp:", connectors)
    proxy = await start_proxy(config, clock)
    assert await http_status(client, proxy) == 200
    if outage == "killed":
        private_redis.stop()  # connections refused
    else:
        private_redis.freeze()  # a blackhole: connections hang, no reset
    clock.advance(400)  # renew while Redis is gone: the rotated token must not be lost
    for _ in range(20):
        assert await http_status(client, proxy) == 200
    assert (await connector_status(client, proxy))["store"] == "degraded"
    assert caplog.text.count("Redis is unreachable") == 1  # one warning, not one per request
    if outage == "killed":
        private_redis.start()  # empty: it kept nothing
    else:
        private_redis.thaw()
    await asyncio.sleep(1.3)  # past the back-off
    clock.advance(400)
    assert (
        await http_status(client, proxy) == 200
    )  # renews with the token rotated during the outage
    assert (await connector_status(client, proxy))["store"] == "ok"
    assert idp.grants == ["refresh_token"] * 3
    assert not idp.reuse_detected
    raw = redis.Redis(port=private_redis.port)
    assert list(raw.scan_iter(match="tp:token:*"))  # written to Redis once it was back
    raw.close()


@pytest.mark.parametrize("workers", [("1", "1"), ("1", "2")], ids=["two-processes", "plus-workers"])
async def test_real_processes_sharing_redis_make_one_token_request(
    write_config: WriteConfig,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    workers: tuple[str, str],
) -> None:
    """``tokenproxy run`` twice (the second with ``--workers 2`` in one case), cold, 200
    concurrent requests to each: one token request in all."""
    idp.delay = 0.3
    connectors = {"api": oauth2_connector(upstream.url, idp.url)}
    ports: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        for name, count in zip(("a", "b"), workers, strict=True):
            config = replica(tmp_path, name, redis_url, prefix, connectors)
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            args = ("run", "-c", str(path), "--port", "0", "--workers", count)
            ready = rf"(listening on .*\n.*){{{count}}}"
            _, output = await stack.enter_async_context(running(*args, ready=ready, drain=True))
            ports.append(re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
        sessions = [aiohttp.ClientSession() for _ in range(20)]  # many pools: every worker
        try:
            statuses = await asyncio.gather(
                *(
                    http_status(sessions[i % 20], f"http://127.0.0.1:{ports[i % 2]}")
                    for i in range(400)
                )
            )
        finally:
            for session in sessions:
                await session.close()
    assert statuses == [200] * 400
    assert len(idp.calls) == 1


async def test_redis_over_tls_with_a_client_certificate_and_an_acl_user(
    start_proxy: StartProxy,
    tmp_path: Path,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    pems = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    leaf.cert_chain_pems[0].write_to_path(pems["cert"])
    leaf.private_key_pem.write_to_path(pems["key"])
    ca.cert_pem.write_to_path(pems["ca"])
    server = PrivateRedis(tmp_path, tls={k: str(v) for k, v in pems.items()})
    server.start()
    try:
        tls = {
            "ca_file": str(pems["ca"]),
            "cert_file": str(pems["cert"]),
            "key_file": str(pems["key"]),
        }
        connectors = {"api": oauth2_connector(upstream.url, idp.url)}
        a, b = [
            await start_proxy(replica(tmp_path, n, server.url, "tp:", connectors, tls=tls))
            for n in ("a", "b")
        ]
        assert await http_status(client, a) == 200 and await http_status(client, b) == 200
        assert len(idp.calls) == 1  # shared over TLS
        described = await connector_status(client, b)
        assert (described["source"], described["store"]) == ("store", "ok")
        async with client.get(f"{b.url}/_proxy/connectors") as response:
            listing = await response.text()
    finally:
        server.stop()
    assert "CANARY" not in caplog.text + listing  # the ACL password never shows


async def test_redis_down_at_start_serves_degraded(
    start_proxy: StartProxy,
    tmp_path: Path,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = PrivateRedis(tmp_path)  # a free port, never started
    connectors = {"api": oauth2_connector(upstream.url, idp.url)}
    proxy = await start_proxy(replica(tmp_path, "a", nobody.url, "tp:", connectors))
    for _ in range(10):
        assert await http_status(client, proxy) == 200
    async with client.get(f"{proxy.url}/_proxy/ready") as response:
        assert response.status == 200
        assert (await response.json())["store"] == {"backend": "redis", "health": "degraded"}
    assert len(idp.calls) == 1
    assert caplog.text.count("Redis is unreachable") == 1


async def test_the_newer_of_the_local_and_the_shared_record_wins(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """A rotation written on this machine while Redis was away is newer than Redis's record:
    it is read, and copied over. A local record older than Redis's never replaces it."""
    from proxy.secrets.envelope import MasterKeys
    from proxy.store.files import FileStore
    from proxy.store.records import TokenRecord
    from proxy.store.redis import RedisStore

    keys = MasterKeys.from_environment()
    here = RedisStore.connect(redis_url, prefix, keys, FileStore(tmp_path / "a", keys), 10)
    there = RedisStore.connect(redis_url, prefix, keys, FileStore(tmp_path / "b", keys), 10)
    older = TokenRecord("k", "s", None, 0, 0, "rt-older", written_wall=100.0)
    newer = TokenRecord("k", "s", None, 0, 0, "rt-newer", written_wall=200.0)
    newest = TokenRecord("k", "s", None, 0, 0, "rt-newest", written_wall=300.0)
    try:
        await here._local.write(older)  # kept here while Redis was unreachable...
        await there.write(newer)  # ...while another replica rotated
        assert await here.read("k") == newer
        assert await there.read("k") == newer  # the older copy was not put back
        await here._local.write(newest)  # a rotation here whose Redis write failed
        assert await there.read("k") == newer
        assert await here.read("k") == newest  # read here: newer, so copied to Redis
        assert await there.read("k") == newest
        await there.write(older)  # a write never replaces a newer record
        assert await here.read("k") == newest
    finally:
        await here.close()
        await there.close()
